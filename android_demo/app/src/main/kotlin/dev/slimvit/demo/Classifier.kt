package dev.slimvit.demo

import android.graphics.Bitmap
import dev.slimvit.policy.Manifest
import dev.slimvit.policy.VariantInfo
import org.tensorflow.lite.Interpreter
import org.tensorflow.lite.gpu.CompatibilityList
import org.tensorflow.lite.gpu.GpuDelegate
import java.nio.ByteBuffer
import java.nio.ByteOrder

/** One variant's LiteRT interpreter: GPU delegate when the device supports it, else XNNPACK. */
class Classifier(model: ByteBuffer, val variant: VariantInfo, private val manifest: Manifest, threads: Int = 4) : AutoCloseable {
    private val gpu: GpuDelegate? = if (CompatibilityList().isDelegateSupportedOnThisDevice) GpuDelegate() else null
    val delegate: String = if (gpu != null) "gpu" else "xnnpack"
    private val interpreter: Interpreter
    val loadMs: Double

    init {
        val t0 = System.nanoTime()
        val options = Interpreter.Options().setNumThreads(threads).setUseXNNPACK(true)
        gpu?.let { options.addDelegate(it) }
        interpreter = Interpreter(model, options)  // a mapping of the pack or of a rebuilt file
        loadMs = (System.nanoTime() - t0) / 1e6
    }

    /** Resize (bilinear) to the variant's resolution, scale to [0,1], normalize per the manifest. */
    fun preprocess(bitmap: Bitmap): ByteBuffer {
        val r = variant.resolution
        val scaled = Bitmap.createScaledBitmap(bitmap, r, r, true)
        val pixels = IntArray(r * r)
        scaled.getPixels(pixels, 0, r, 0, 0, r, r)
        val buf = ByteBuffer.allocateDirect(4 * 3 * r * r).order(ByteOrder.nativeOrder())
        val nhwc = manifest.layout == "NHWC"
        val planes = Array(3) { FloatArray(r * r) }
        for (i in pixels.indices) {
            val p = pixels[i]
            val rgb = floatArrayOf(((p shr 16) and 0xFF) / 255f, ((p shr 8) and 0xFF) / 255f, (p and 0xFF) / 255f)
            for (c in 0 until 3) planes[c][i] = ((rgb[c] - manifest.mean[c]) / manifest.std[c]).toFloat()
        }
        if (nhwc) {
            for (i in 0 until r * r) for (c in 0 until 3) buf.putFloat(planes[c][i])
        } else {
            for (c in 0 until 3) for (i in 0 until r * r) buf.putFloat(planes[c][i])
        }
        buf.rewind()
        return buf
    }

    /** Returns (label index, logits, milliseconds). */
    fun classify(input: ByteBuffer): Triple<Int, FloatArray, Double> {
        val out = Array(1) { FloatArray(manifest.labels.size) }
        val t0 = System.nanoTime()
        interpreter.run(input, out)
        val ms = (System.nanoTime() - t0) / 1e6
        val logits = out[0]
        return Triple(logits.indices.maxByOrNull { logits[it] } ?: 0, logits, ms)
    }

    override fun close() {
        interpreter.close()
        gpu?.close()
    }
}
