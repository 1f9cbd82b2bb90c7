package dev.slimvit.demo

import android.content.Context
import dev.slimvit.policy.Artifact
import dev.slimvit.policy.Manifest
import java.io.File
import java.security.MessageDigest

/**
 * The bundle shipped in assets/bundle (copied there by `slimvit bundle install-android`).
 * Every artifact is copied to app storage once and its sha256 checked against the manifest
 * before an interpreter may open it; a mismatch is fatal for that artifact.
 */
class BundleStore(private val context: Context, private val assetDir: String = "bundle") {
    val manifest: Manifest = Manifest.parse(
        context.assets.open("$assetDir/manifest.json").bufferedReader().use { it.readText() }
    )
    private val verified = HashMap<String, File>()

    /** The verified local file of an artifact. Throws SecurityException on a hash mismatch. */
    @Synchronized
    fun verifiedFile(artifact: Artifact): File {
        verified[artifact.path]?.let { return it }
        val target = File(context.filesDir, "bundle-v${manifest.bundleVersion}/${artifact.path}")
        if (!target.exists() || target.length() != artifact.bytes) {
            target.parentFile?.mkdirs()
            val tmp = File(target.path + ".tmp")
            context.assets.open("$assetDir/${artifact.path}").use { input ->
                tmp.outputStream().use { input.copyTo(it) }
            }
            if (!tmp.renameTo(target)) throw IllegalStateException("cannot move ${tmp.name} into place")
        }
        val digest = sha256(target)
        if (digest != artifact.sha256 || target.length() != artifact.bytes) {
            target.delete()
            throw SecurityException("${artifact.path}: sha256 $digest does not match the manifest; refusing to load")
        }
        verified[artifact.path] = target
        return target
    }

    companion object {
        fun sha256(file: File): String {
            val md = MessageDigest.getInstance("SHA-256")
            file.inputStream().use { input ->
                val buf = ByteArray(1 shl 16)
                while (true) {
                    val n = input.read(buf)
                    if (n < 0) break
                    md.update(buf, 0, n)
                }
            }
            return md.digest().joinToString("") { "%02x".format(it) }
        }
    }
}
