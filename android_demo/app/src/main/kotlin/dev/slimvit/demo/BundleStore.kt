package dev.slimvit.demo

import android.content.Context
import dev.slimvit.pack.FileSource
import dev.slimvit.pack.Pack
import dev.slimvit.policy.Artifact
import dev.slimvit.policy.Manifest
import java.io.File

/**
 * The bundle shipped as assets/bundle.svpack (written by `slimvit bundle install-android`).
 * The pack is copied to app storage once; an artifact is rebuilt from it the first time the
 * policy needs its tier, checked against the manifest's sha256 and size before it is written
 * under its final name, so an interpreter never opens an unchecked file. Disk use is the pack
 * plus the tiers materialized so far.
 */
class BundleStore(private val context: Context, private val asset: String = "bundle.svpack") {
    private val packFile: File = File(context.filesDir, asset).also { target ->
        val size = context.assets.openFd(asset).use { it.length }
        if (!target.isFile || target.length() != size) {
            val tmp = File(target.path + ".tmp")
            context.assets.open(asset).use { input -> tmp.outputStream().use { input.copyTo(it) } }
            if (!tmp.renameTo(target)) throw IllegalStateException("cannot move ${tmp.name} into place")
        }
    }
    private val pack = Pack(FileSource(packFile), name = asset)
    val manifest: Manifest = Manifest.parse(String(pack.read("manifest.json"), Charsets.UTF_8))
    private val root = File(context.filesDir, "bundle-v${manifest.bundleVersion}")
    private val verified = HashMap<String, File>()

    /** The verified local file of an artifact, rebuilt on first use. Throws PackException when the
     * pack does not rebuild exactly the bytes the manifest pins. */
    @Synchronized
    fun verifiedFile(artifact: Artifact): File = verified.getOrPut(artifact.path) {
        pack.materialize(artifact.path, root, artifact.sha256, artifact.bytes)
    }
}
