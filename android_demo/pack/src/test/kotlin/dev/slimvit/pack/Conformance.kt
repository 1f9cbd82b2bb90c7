package dev.slimvit.pack

import dev.slimvit.policy.Json
import dev.slimvit.policy.JsonException
import java.io.File
import java.security.MessageDigest
import java.util.Base64
import kotlin.system.exitProcess

/**
 * Runs the shared pack vectors (conformance/pack_vectors.json) through this port: every good pack
 * rebuilds files of the listed sizes and sha256s; every malformed one is refused with the listed
 * error class, on one line, before any file is returned. With `--bench PACK PATH N` it times
 * rebuilding one file instead (benchmarks/bench_pack.py).
 */
fun main(args: Array<String>) {
    if (args.isNotEmpty() && args[0] == "--bench") return bench(File(args[1]), args[2], args[3].toInt())
    if (args.isNotEmpty() && args[0] == "--bench-map") return benchMap(File(args[1]), args[2], args[3].toInt())
    val path = if (args.isNotEmpty()) args[0] else "conformance/pack_vectors.json"
    @Suppress("UNCHECKED_CAST")
    val doc = Json.parse(File(path).readText()) as? Map<String, Any?> ?: throw JsonException("$path: not an object")
    if (doc["format"] != "slimvit-pack-vectors") throw JsonException("$path is not a slimvit pack vectors file")
    var passed = 0
    var failed = 0
    @Suppress("UNCHECKED_CAST")
    for (case in doc["cases"] as List<Map<String, Any?>>) {
        val name = case["name"] as String
        val bytes = Base64.getDecoder().decode(case["pack"] as String)
        val want = case["error"] as String?
        val problem: String? = try {
            val pack = Pack(bytes, (case["max_file_bytes"] as Number).toLong(), (case["max_total_bytes"] as Number).toLong())
            val got = pack.readAll().mapValues { (_, d) ->
                mapOf("size" to d.size.toLong(), "sha256" to hex(MessageDigest.getInstance("SHA-256").digest(d)))
            }
            @Suppress("UNCHECKED_CAST")
            val expect = (case["files"] as Map<String, Map<String, Any?>>?)?.mapValues { (_, v) ->
                mapOf("size" to (v["size"] as Number).toLong(), "sha256" to v["sha256"])
            }
            @Suppress("UNCHECKED_CAST")
            val regions = (case["regions"] as Map<String, List<Number>?>?)?.mapValues { (_, v) ->
                v?.let { Pair(it[0].toLong(), it[1].toLong()) }
            }
            val gotRegions = pack.files.associate { it.path to pack.region(it.path) }
            when {
                want != null -> "accepted a pack that must be refused ($want)"
                got != expect -> "rebuilt $got, expected $expect"
                regions != null && gotRegions != regions -> "regions $gotRegions, expected $regions"
                else -> mapProblem(bytes, pack)
            }
        } catch (e: PackException) {
            when {
                want != e.code -> "refused as ${e.code}: ${e.message}"
                e.message!!.contains('\n') -> "message is not one line"
                else -> null
            }
        }
        if (problem == null) passed++ else { failed++; println("FAIL $name: $problem") }
    }
    println("pack vectors: $passed passed, $failed failed")
    if (failed > 0) exitProcess(1)
}

/**
 * Every file stored in place, mapped from the pack written to a file: the same bytes as [Pack.read]
 * (sha256 checked); with one byte of the region flipped, the map is refused unless told the hash
 * was checked before. Null when all holds.
 */
private fun mapProblem(bytes: ByteArray, pack: Pack): String? {
    val inPlace = pack.files.filter { pack.region(it.path) != null }
    if (inPlace.isEmpty()) return null
    val tmp = File.createTempFile("pack-vector", ".svpack")
    try {
        tmp.writeBytes(bytes)
        java.io.RandomAccessFile(tmp, "r").use { raf ->
            for (f in inPlace) {
                val buf = pack.map(raf.channel, f.path) ?: return "${f.path}: no mapping"
                val mapped = ByteArray(buf.remaining()).also { buf.get(it) }
                if (!mapped.contentEquals(pack.read(f.path))) return "${f.path}: mapped bytes differ from the rebuilt ones"
            }
        }
        val (offset, _) = pack.region(inPlace[0].path)!!
        val flipped = bytes.copyOf().also { it[offset.toInt()] = (it[offset.toInt()].toInt() xor 1).toByte() }
        tmp.writeBytes(flipped)
        java.io.RandomAccessFile(tmp, "r").use { raf ->
            val bad = Pack(flipped)
            try {
                bad.map(raf.channel, inPlace[0].path)
                return "${inPlace[0].path}: a flipped byte in place was not refused"
            } catch (e: PackException) {
                if (e.code != "hash") return "flipped byte refused as ${e.code}, not hash"
            }
            if (bad.map(raf.channel, inPlace[0].path, checkHash = false) == null) return "no unchecked mapping"
        }
    } finally {
        tmp.delete()
    }
    return null
}

/** Open [path] of [pack] in place N times (after one warm-up): map + sha256, and map alone. */
private fun benchMap(pack: File, path: String, n: Int) {
    java.io.RandomAccessFile(pack, "r").use { raf ->
        FileSource(pack).use { src ->
            for (checkHash in listOf(true, false)) {
                val times = (0..n).map {
                    val t0 = System.nanoTime()
                    val p = Pack(src)
                    val buf = p.map(raf.channel, path, checkHash) ?: error("$path is not stored in place")
                    check(buf.capacity().toLong() == p.byPath[path]!!.size)
                    (System.nanoTime() - t0) / 1e9
                }.drop(1).sorted()
                println("kotlin_map_${if (checkHash) "hash" else "nohash"}_s ${times[times.size / 2]}")
            }
        }
    }
}

/** Rebuild [path] of [pack] N times (after one warm-up) and print the median seconds. */
private fun bench(pack: File, path: String, n: Int) {
    FileSource(pack).use { src ->
        val times = (0..n).map {
            val p = Pack(src)
            val t0 = System.nanoTime()
            val bytes = p.read(path)
            check(bytes.size.toLong() == p.byPath[path]!!.size)
            (System.nanoTime() - t0) / 1e9
        }.drop(1).sorted()
        println("kotlin_rebuild_s ${times[times.size / 2]}")
    }
}
