package dev.slimvit.pack

import java.io.File
import java.io.RandomAccessFile
import java.nio.MappedByteBuffer
import java.nio.channels.FileChannel
import java.security.MessageDigest
import java.util.zip.DataFormatException
import java.util.zip.Inflater

/**
 * slimvit pack reader (docs/bundle-format.md, "Packed bundles"): rebuilds the files of a packed
 * bundle from COPY/INSERT op streams over its blobs. Pure JVM (java.util.zip, java.security), no
 * Android API, so `make test-kotlin` runs it on the shared vectors with plain kotlinc.
 *
 * Every structural check happens when the pack is opened or before a file's first byte is
 * produced; a rebuilt file is handed out (or renamed into place) only once its size and sha256
 * match. Errors carry the same [PackException.code] as the Python and JS ports: format,
 * truncated, range, cap, path, hash.
 */
class PackException(val code: String, message: String) : Exception(message)

/** Random access to the pack's bytes: the whole file in memory, or a file read on demand. */
interface PackSource {
    val size: Long
    fun read(offset: Long, length: Int): ByteArray
    fun readInto(offset: Long, dst: ByteArray, dstOffset: Int, length: Int) =
        System.arraycopy(read(offset, length), 0, dst, dstOffset, length)
}

class ByteArraySource(private val bytes: ByteArray) : PackSource {
    override val size: Long get() = bytes.size.toLong()
    override fun read(offset: Long, length: Int): ByteArray = bytes.copyOfRange(offset.toInt(), offset.toInt() + length)
}

class FileSource(file: File) : PackSource, java.io.Closeable {
    private val raf = RandomAccessFile(file, "r")
    override val size: Long get() = raf.length()
    override fun read(offset: Long, length: Int): ByteArray {
        val out = ByteArray(length)
        readInto(offset, out, 0, length)
        return out
    }
    override fun readInto(offset: Long, dst: ByteArray, dstOffset: Int, length: Int) {
        synchronized(raf) { raf.seek(offset); raf.readFully(dst, dstOffset, length) }
    }
    override fun close() = raf.close()
}

data class Blob(val codec: Int, val offset: Long, val stored: Long, val size: Long)

data class PackedFile(val path: String, val size: Long, val sha256: String, val opsBlob: Int,
                      val opsOffset: Long, val opsLen: Long)

/** One op: [blob] -1 inserts from the file's op blob; else copies from that decoded blob. */
data class Op(val blob: Int, val offset: Long, val length: Long)

private const val MAGIC = "SLIMPACK"
private const val VERSION = 1
private const val PREAMBLE = 13
private const val MAX_VARINT_BYTES = 7
private const val MAX_HEADER_BYTES = 64L shl 20
private const val MAX_ENTRIES = 1L shl 20

private class Cursor(val b: ByteArray, val what: String) {
    var pos = 0
    fun byte(): Int {
        if (pos >= b.size) throw PackException("truncated", "$what ends early (at byte $pos)")
        return b[pos++].toInt() and 0xff
    }
    fun take(n: Long): ByteArray {
        if (n > b.size - pos) throw PackException("truncated", "$what ends early (wants $n bytes at $pos)")
        pos += n.toInt()
        return b.copyOfRange(pos - n.toInt(), pos)
    }
    fun varint(): Long {
        var value = 0L
        for (i in 0 until MAX_VARINT_BYTES) {
            val x = byte()
            value = value or ((x and 0x7f).toLong() shl (7 * i))
            if (x and 0x80 == 0) return value
        }
        throw PackException("format", "$what: varint longer than $MAX_VARINT_BYTES bytes")
    }
}

/** Why [path] may not be written under a target directory, or null when it may. */
fun pathProblem(path: String): String? {
    if (path.isEmpty() || '\\' in path || '\u0000' in path || Regex("^[A-Za-z]:").containsMatchIn(path) || path.startsWith("/"))
        return "must be a non-empty relative '/' path without backslash, NUL or drive letter"
    if (path.split("/").any { it == "" || it == "." || it == ".." })
        return "has an empty, '.' or '..' component and would escape the target directory"
    return null
}

fun hex(bytes: ByteArray): String = bytes.joinToString("") { "%02x".format(it.toInt() and 0xff) }

class Pack(private val source: PackSource, val maxFileBytes: Long = 2L shl 30,
           val maxTotalBytes: Long = 8L shl 30, val name: String = "pack") {
    val blobs = mutableListOf<Blob>()
    val files = mutableListOf<PackedFile>()
    val byPath = LinkedHashMap<String, PackedFile>()
    private val dataStart: Long
    private val decoded = HashMap<Int, ByteArray>()
    private val materialized = HashSet<String>()

    constructor(bytes: ByteArray, maxFileBytes: Long = 2L shl 30, maxTotalBytes: Long = 8L shl 30,
                name: String = "pack") : this(ByteArraySource(bytes), maxFileBytes, maxTotalBytes, name)

    private fun fail(code: String, msg: String): Nothing = throw PackException(code, "$name: $msg")

    init {
        if (source.size < PREAMBLE) fail("truncated", "${source.size} bytes is too short for a pack")
        val pre = source.read(0, PREAMBLE)
        if (String(pre, 0, 8, Charsets.ISO_8859_1) != MAGIC) fail("format", "not a slimvit pack (no SLIMPACK magic)")
        if (pre[8].toInt() != VERSION) fail("format", "pack version ${pre[8]}; this reader reads version $VERSION")
        val hlen = (0 until 4).fold(0L) { acc, i -> acc or ((pre[9 + i].toLong() and 0xff) shl (8 * i)) }
        if (hlen > MAX_HEADER_BYTES) fail("cap", "header of $hlen bytes is over the $MAX_HEADER_BYTES cap")
        if (PREAMBLE + hlen > source.size) fail("truncated", "header of $hlen bytes runs past the end of the file")
        val cur = Cursor(source.read(PREAMBLE.toLong(), hlen.toInt()), "$name: header")
        val dataLen = source.size - PREAMBLE - hlen
        dataStart = PREAMBLE + hlen
        fun count(what: String): Long {
            val n = cur.varint()
            if (n > MAX_ENTRIES) fail("cap", "$n $what, over the $MAX_ENTRIES cap")
            return n
        }
        for (i in 0 until count("blobs")) {
            val codec = cur.byte(); val offset = cur.varint(); val stored = cur.varint(); val size = cur.varint()
            if (codec != 0 && codec != 1) fail("format", "blob $i has unknown codec $codec")
            if (offset + stored > dataLen) fail("truncated", "blob $i runs past the end of the file")
            if (codec == 0 && stored != size) fail("format", "raw blob $i stores $stored bytes but declares $size")
            if (size > maxTotalBytes) fail("cap", "blob $i expands to $size bytes, over the $maxTotalBytes cap")
            blobs.add(Blob(codec, offset, stored, size))
        }
        var total = 0L
        val utf8 = Charsets.UTF_8.newDecoder()
        for (i in 0 until count("files")) {
            val raw = cur.take(cur.varint())
            val path = try { utf8.decode(java.nio.ByteBuffer.wrap(raw)).toString() } catch (e: java.nio.charset.CharacterCodingException) {
                fail("path", "a file path is not UTF-8")
            }
            pathProblem(path)?.let { fail("path", "file path \"$path\" $it") }
            if (byPath.containsKey(path)) fail("path", "file path \"$path\" appears twice")
            val size = cur.varint(); val sha = hex(cur.take(32))
            val opsBlob = cur.varint(); val opsOffset = cur.varint(); val opsLen = cur.varint()
            if (size > maxFileBytes) fail("cap", "$path expands to $size bytes, over the $maxFileBytes file cap")
            total += size
            if (total > maxTotalBytes) fail("cap", "files expand to over the $maxTotalBytes bytes cap")
            if (opsBlob >= blobs.size || opsOffset + opsLen > blobs[opsBlob.toInt()].size)
                fail("range", "$path: its op stream lies outside blob $opsBlob")
            val f = PackedFile(path, size, sha, opsBlob.toInt(), opsOffset, opsLen)
            files.add(f); byPath[path] = f
        }
        if (cur.pos != cur.b.size) fail("format", "${cur.b.size - cur.pos} stray bytes after the header")
        for (p in byPath.keys) {
            val parts = p.split("/")
            for (i in 1 until parts.size) {
                val dir = parts.subList(0, i).joinToString("/")
                if (byPath.containsKey(dir)) fail("path", "\"$dir\" is both a file and a directory")
            }
        }
    }

    private fun decode(index: Int): ByteArray = decoded.getOrPut(index) {
        val b = blobs[index]
        if (b.codec == 0) return@getOrPut source.read(dataStart + b.offset, b.size.toInt())
        val inflater = Inflater(true)
        try {
            inflater.setInput(source.read(dataStart + b.offset, b.stored.toInt()))
            val out = ByteArray(b.size.toInt())
            var n = 0
            while (n < out.size && !inflater.finished()) {
                val got = inflater.inflate(out, n, out.size - n)
                if (got == 0 && (inflater.needsInput() || inflater.needsDictionary())) break
                n += got
            }
            // One byte more must not come out: a stream longer than declared is refused.
            val extra = if (inflater.finished()) 0 else inflater.inflate(ByteArray(1))
            if (n != out.size || extra != 0 || !inflater.finished())
                fail("range", "blob $index does not inflate to its declared ${b.size} bytes")
            out
        } catch (e: DataFormatException) {
            fail("format", "blob $index is not valid DEFLATE (${e.message})")
        } finally {
            inflater.end()
        }
    }

    /** The checked op list of a file; nothing is copied yet. */
    fun ops(f: PackedFile): List<Op> {
        val stream = decode(f.opsBlob).copyOfRange(f.opsOffset.toInt(), (f.opsOffset + f.opsLen).toInt())
        val cur = Cursor(stream, "$name: op stream of ${f.path}")
        val out = ArrayList<Op>()
        var written = 0L
        var prevEnd = 0L
        while (cur.pos < stream.size) {
            val h = cur.varint()
            val n = h ushr 1
            if (n == 0L) fail("format", "${f.path}: an op of length 0")
            if (written + n > f.size) fail("range", "${f.path}: ops write past its declared ${f.size} bytes")
            if (h and 1L == 0L) {
                val start = cur.pos
                cur.take(n)
                out.add(Op(-1, f.opsOffset + start, n))
            } else {
                val blob = cur.varint()
                val z = cur.varint()
                val offset = prevEnd + (if (z and 1L == 0L) z ushr 1 else -((z + 1) ushr 1))
                if (blob >= blobs.size || offset < 0 || offset + n > blobs[blob.toInt()].size)
                    fail("range", "${f.path}: a copy reads outside blob $blob")
                out.add(Op(blob.toInt(), offset, n))
                prevEnd = offset + n
            }
            written += n
        }
        if (written != f.size) fail("range", "${f.path}: ops write $written bytes, not its declared ${f.size}")
        return out
    }

    /** Rebuild one file; its size and sha256 are checked before it is returned. */
    fun read(path: String): ByteArray {
        val f = byPath[path] ?: fail("format", "holds no file \"$path\"")
        val ops = ops(f)
        val out = ByteArray(f.size.toInt())
        var pos = 0
        for (op in ops) {
            val n = op.length.toInt()
            if (op.blob < 0) System.arraycopy(decode(f.opsBlob), op.offset.toInt(), out, pos, n)
            else if (blobs[op.blob].codec == 1) System.arraycopy(decode(op.blob), op.offset.toInt(), out, pos, n)
            else source.readInto(dataStart + blobs[op.blob].offset + op.offset, out, pos, n)
            pos += n
        }
        val digest = hex(MessageDigest.getInstance("SHA-256").digest(out))
        if (digest != f.sha256) fail("hash", "rebuilt ${f.path} has another sha256 than the pack states")
        return out
    }

    /**
     * Where [path] lies in the pack file as it is: (offset, length) when its op stream is one copy
     * from a raw blob (each group's widest artifact; raw blobs start at multiples of 64), else
     * null (rebuild it with [read] or [materialize]). The bytes there are not checked yet.
     */
    fun region(path: String): Pair<Long, Long>? {
        val f = byPath[path] ?: fail("format", "holds no file \"$path\"")
        val ops = ops(f)
        if (ops.size != 1 || ops[0].blob < 0 || blobs[ops[0].blob].codec != 0) return null
        return Pair(dataStart + blobs[ops[0].blob].offset + ops[0].offset, ops[0].length)
    }

    /**
     * [path] as a read-only mapping of the pack file ([channel] of the same file), no copy: what
     * LiteRT's `Interpreter(ByteBuffer)` and ONNX Runtime's `createSession(ByteBuffer)` take. Its
     * sha256 is checked against the header unless [checkHash] is false (an app that checked it
     * once at install time and recorded that). Null when the file must be rebuilt instead.
     */
    fun map(channel: FileChannel, path: String, checkHash: Boolean = true): MappedByteBuffer? {
        val (offset, length) = region(path) ?: return null
        val buf = channel.map(FileChannel.MapMode.READ_ONLY, offset, length)
        if (checkHash) {
            val md = MessageDigest.getInstance("SHA-256")
            md.update(buf.duplicate())
            if (hex(md.digest()) != byPath[path]!!.sha256) fail("hash", "$path in the pack has another sha256 than the pack states")
        }
        return buf
    }

    /** Every listed file, all op streams checked before any file is rebuilt. */
    fun readAll(paths: List<String> = files.map { it.path }): Map<String, ByteArray> {
        paths.forEach { p -> byPath[p]?.let { ops(it) } }
        return paths.associateWith { read(it) }
    }

    /**
     * Materialize one file under [root] (lazily, when the app's policy first needs a tier): rebuilt
     * and checked against [expectedSha256] / [expectedSize] from the signed manifest, written to a
     * temporary name and renamed into place, so a runtime never opens an unchecked file.
     */
    fun materialize(path: String, root: File, expectedSha256: String, expectedSize: Long): File {
        val f = byPath[path] ?: fail("format", "holds no file \"$path\"")
        if (f.sha256 != expectedSha256 || f.size != expectedSize)
            fail("hash", "$path: the pack rebuilds sha256 ${f.sha256}, the manifest says $expectedSha256")
        val target = File(root, path)
        if (path in materialized && target.isFile) return target
        val bytes = read(path)
        target.parentFile?.mkdirs()
        val tmp = File(target.parentFile, ".${target.name}.tmp")
        tmp.writeBytes(bytes)
        if (!tmp.renameTo(target)) fail("format", "cannot rename into $target")
        materialized.add(path)
        return target
    }
}
