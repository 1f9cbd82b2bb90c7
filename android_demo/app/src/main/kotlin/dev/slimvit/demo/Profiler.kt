package dev.slimvit.demo

import android.graphics.Bitmap
import android.os.Build
import dev.slimvit.policy.Manifest
import java.io.File
import java.text.SimpleDateFormat
import java.util.Date
import java.util.Locale
import java.util.TimeZone

/**
 * Profile mode: time every tflite artifact of the bundle and write a device report
 * (docs/device-report.md, format slimvit-device-report/1) for `slimvit ingest`.
 */
class Profiler(private val store: BundleStore, private val runs: Int = 100, private val warmup: Int = 10) {

    fun run(sample: Bitmap, threads: Int, outDir: File, progress: (String) -> Unit): File {
        val manifest: Manifest = store.manifest
        val entries = ArrayList<String>()
        var delegate = "xnnpack"
        for (variant in manifest.variants) for (artifact in variant.artifacts.filter { it.format == "tflite" }) {
            progress("${variant.id} ${artifact.precision}")
            Classifier(store.model(artifact), variant, manifest, threads).use { c ->
                delegate = c.delegate
                val input = c.preprocess(sample)
                val first = c.classify(input).third
                repeat(warmup) { c.classify(input) }
                val times = DoubleArray(runs) { c.classify(input).third }.sorted()
                fun pct(p: Double) = times[minOf(times.size - 1, (p * times.size).toInt())]
                entries.add(
                    """{"variant": "${variant.id}", "format": "tflite", "precision": "${artifact.precision}", """ +
                        """"sha256": "${artifact.sha256}", "p50_ms": ${pct(0.5)}, "p90_ms": ${pct(0.9)}, """ +
                        """"p99_ms": ${pct(0.99)}, "mean_ms": ${times.average()}, "load_ms": ${c.loadMs}, """ +
                        """"first_ms": $first, "runs": $runs, "threads": $threads, "delegate": "${c.delegate}"}"""
                )
            }
        }
        val id = DeviceMonitor.deviceId()
        val now = SimpleDateFormat("yyyy-MM-dd'T'HH:mm:ss'Z'", Locale.US).apply { timeZone = TimeZone.getTimeZone("UTC") }
        val json = """
            |{
            |  "format": "slimvit-device-report/1",
            |  "created_at": "${now.format(Date())}",
            |  "bundle_version": ${manifest.bundleVersion},
            |  "app": "slimvit-android-demo 0.1 (profile mode)",
            |  "device": {"id": "$id", "name": "${Build.MANUFACTURER} ${Build.MODEL}", "kind": "phone",
            |             "model": "${Build.MANUFACTURER} ${Build.MODEL} (${Build.DEVICE})", "os": "Android ${Build.VERSION.RELEASE}",
            |             "soc": "${if (Build.VERSION.SDK_INT >= 31) Build.SOC_MODEL else Build.HARDWARE}",
            |             "cores": ${Runtime.getRuntime().availableProcessors()}},
            |  "runtime": {"name": "litert", "version": "1.0.1", "delegate": "$delegate", "threads": $threads},
            |  "entries": [
            |    ${entries.joinToString(",\n    ")}
            |  ]
            |}
            |""".trimMargin()
        outDir.mkdirs()
        val out = File(outDir, "device_report_$id.json")
        val tmp = File(out.path + ".tmp")
        tmp.writeText(json)
        tmp.renameTo(out)
        return out
    }
}
