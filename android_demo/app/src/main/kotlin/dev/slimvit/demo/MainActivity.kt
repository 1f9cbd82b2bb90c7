package dev.slimvit.demo

import android.graphics.BitmapFactory
import android.os.Bundle
import android.widget.Button
import android.widget.LinearLayout
import android.widget.ScrollView
import android.widget.TextView
import androidx.appcompat.app.AppCompatActivity
import androidx.lifecycle.lifecycleScope
import dev.slimvit.policy.DeviceState
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.delay
import kotlinx.coroutines.isActive
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext

/**
 * Classifies the bundled sample image in a loop with the variant the policy picks for the
 * current thermal / battery / power-save state, and shows variant, reason, state and latency.
 */
class MainActivity : AppCompatActivity() {
    private lateinit var store: BundleStore
    private lateinit var switcher: VariantSwitcher
    private lateinit var monitor: DeviceMonitor
    private lateinit var status: TextView
    private lateinit var result: TextView
    private var lastState: DeviceState? = null
    private var headroom: Float? = null

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        status = TextView(this).apply { textSize = 16f }
        result = TextView(this).apply { textSize = 22f }
        val column = LinearLayout(this).apply {
            orientation = LinearLayout.VERTICAL
            setPadding(32, 32, 32, 32)
            addView(result)
            addView(status)
            addView(button("Simulate heat (severe)") { monitor.setOverride(monitor.current().copy(thermal = "severe")) })
            addView(button("Simulate battery 15%") { monitor.setOverride(monitor.current().copy(battery = 15.0, charging = false)) })
            addView(button("Use real sensors") { monitor.setOverride(null) })
            addView(button("Profile all variants") { profile() })
        }
        setContentView(ScrollView(this).apply { addView(column) })

        store = BundleStore(this)
        switcher = VariantSwitcher(store)
        monitor = DeviceMonitor(this) { state, room ->
            lastState = state
            headroom = room
            switcher.update(state)
        }
    }

    override fun onStart() {
        super.onStart()
        monitor.start()
        val sample = assets.open("sample.png").use { BitmapFactory.decodeStream(it) }
        lifecycleScope.launch {
            while (isActive) {
                val (label, ms, choice) = withContext(Dispatchers.Default) {
                    val c = switcher.current()
                    val (idx, _, ms) = c.classify(c.preprocess(sample))
                    Triple(store.manifest.labels[idx], ms, switcher.choice)
                }
                val s = lastState
                result.text = "prediction: $label   (${"%.2f".format(ms)} ms)"
                status.text = "variant: ${choice?.variant} (tier ${choice?.tier}, ${choice?.rule})\n" +
                    "reason: ${choice?.reason}\n" +
                    "thermal: ${s?.thermal}  headroom: ${headroom ?: "n/a"}\n" +
                    "battery: ${s?.battery?.let { "%.0f".format(it) }}%  charging: ${s?.charging}  power-save: ${s?.lowPower}"
                delay(200)
            }
        }
    }

    override fun onStop() {
        monitor.stop()
        super.onStop()
    }

    override fun onDestroy() {
        switcher.close()
        super.onDestroy()
    }

    private fun profile() {
        val sample = assets.open("sample.png").use { BitmapFactory.decodeStream(it) }
        lifecycleScope.launch {
            val file = withContext(Dispatchers.Default) {
                Profiler(store).run(sample, threads = 4, outDir = getExternalFilesDir(null) ?: filesDir) { step ->
                    runOnUiThread { result.text = "profiling $step" }
                }
            }
            result.text = "report: ${file.path}\n(adb pull it, then: slimvit ingest BUNDLE report.json)"
        }
    }

    private fun button(text: String, onClick: () -> Unit) = Button(this).apply {
        this.text = text
        setOnClickListener { onClick() }
    }
}
