package dev.slimvit.demo

import android.content.Context
import dev.slimvit.pack.FileSource
import dev.slimvit.pack.Pack
import dev.slimvit.pack.PackException
import dev.slimvit.policy.Artifact
import dev.slimvit.policy.Manifest
import java.io.File
import java.io.RandomAccessFile
import java.nio.MappedByteBuffer
import java.nio.channels.FileChannel

/**
 * The bundle shipped as assets/bundle.svpack (written by `slimvit bundle install-android`).
 * The pack is copied to app storage once; an artifact is rebuilt from it the first time the
 * policy needs its tier, checked against the manifest's sha256 and size before it is written
 * under its final name, so an interpreter never opens an unchecked file. Disk use is the pack
 * plus the tiers materialized so far.
 *
 * The widest artifact of the pack (its group's raw base blob) is not rebuilt at all: [model] maps
 * it from the pack in place. Its sha256 is checked against the manifest the first time, and that
 * check is recorded in `bundle.svpack.checked` (app-private storage, deleted whenever the pack is
 * copied again), so later opens cost a map and no hash.
 */
class BundleStore(private val context: Context, private val asset: String = "bundle.svpack") {
    private val packFile: File = File(context.filesDir, asset).also { target ->
        val size = context.assets.openFd(asset).use { it.length }
        if (!target.isFile || target.length() != size) {
            File(target.path + ".checked").delete()  // a new pack: nothing of it is checked yet
            val tmp = File(target.path + ".tmp")
            context.assets.open(asset).use { input -> tmp.outputStream().use { input.copyTo(it) } }
            if (!tmp.renameTo(target)) throw IllegalStateException("cannot move ${tmp.name} into place")
        }
    }
    private val pack = Pack(FileSource(packFile), name = asset)
    val manifest: Manifest = Manifest.parse(String(pack.read("manifest.json"), Charsets.UTF_8))
    private val root = File(context.filesDir, "bundle-v${manifest.bundleVersion}")
    private val verified = HashMap<String, File>()

    private val channel: FileChannel = RandomAccessFile(packFile, "r").channel
    private val checkedRecord = File(packFile.path + ".checked")
    private val checked: MutableSet<String> =
        if (checkedRecord.isFile) checkedRecord.readLines().toMutableSet() else mutableSetOf()

    /**
     * The model bytes of an artifact, what `Interpreter(ByteBuffer, options)` takes: mapped from
     * the pack in place when it is stored there as one raw blob (sha256 checked against the
     * manifest once, then recorded), else the rebuilt, verified file (mapped).
     */
    @Synchronized
    fun model(artifact: Artifact): MappedByteBuffer {
        val key = "${artifact.path} ${artifact.sha256}"
        val f = pack.byPath[artifact.path]
        if (f != null && f.sha256 == artifact.sha256 && f.size == artifact.bytes) {
            pack.map(channel, artifact.path, checkHash = key !in checked)?.let { buf ->
                if (checked.add(key)) checkedRecord.appendText("$key\n")
                return buf
            }
        } else if (f != null) {
            throw PackException("hash", "${artifact.path}: the pack holds sha256 ${f.sha256}, the manifest says ${artifact.sha256}")
        }
        return RandomAccessFile(verifiedFile(artifact), "r").use {
            it.channel.map(FileChannel.MapMode.READ_ONLY, 0, it.length())
        }
    }

    /** The verified local file of an artifact, rebuilt on first use. Throws PackException when the
     * pack does not rebuild exactly the bytes the manifest pins. */
    @Synchronized
    fun verifiedFile(artifact: Artifact): File = verified.getOrPut(artifact.path) {
        pack.materialize(artifact.path, root, artifact.sha256, artifact.bytes)
    }
}
