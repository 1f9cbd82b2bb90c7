package dev.slimvit.demo

import android.content.BroadcastReceiver
import android.content.Context
import android.content.Intent
import android.content.IntentFilter
import android.os.BatteryManager
import android.os.Build
import android.os.PowerManager
import dev.slimvit.policy.DeviceState

/**
 * Reads thermal status, battery and power-save mode and reports every change.
 * Thermal names follow docs/policy.md: THERMAL_STATUS_NONE..SHUTDOWN -> none..shutdown.
 */
class DeviceMonitor(private val context: Context, private val onChange: (DeviceState, Float?) -> Unit) {
    private val power = context.getSystemService(Context.POWER_SERVICE) as PowerManager
    private var thermal = "none"
    private var battery = 100.0
    private var charging = false
    private var override: DeviceState? = null

    private val thermalListener = PowerManager.OnThermalStatusChangedListener { status ->
        thermal = thermalName(status)
        publish()
    }

    private val batteryReceiver = object : BroadcastReceiver() {
        override fun onReceive(ctx: Context, intent: Intent) {
            val level = intent.getIntExtra(BatteryManager.EXTRA_LEVEL, -1)
            val scale = intent.getIntExtra(BatteryManager.EXTRA_SCALE, 100)
            if (level >= 0 && scale > 0) battery = 100.0 * level / scale
            val status = intent.getIntExtra(BatteryManager.EXTRA_STATUS, -1)
            charging = status == BatteryManager.BATTERY_STATUS_CHARGING || status == BatteryManager.BATTERY_STATUS_FULL
            publish()
        }
    }

    private val powerSaveReceiver = object : BroadcastReceiver() {
        override fun onReceive(ctx: Context, intent: Intent) = publish()
    }

    fun start() {
        if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.Q) {
            thermal = thermalName(power.currentThermalStatus)
            power.addThermalStatusListener(context.mainExecutor, thermalListener)
        }
        context.registerReceiver(batteryReceiver, IntentFilter(Intent.ACTION_BATTERY_CHANGED))
        context.registerReceiver(powerSaveReceiver, IntentFilter(PowerManager.ACTION_POWER_SAVE_MODE_CHANGED))
        publish()
    }

    fun stop() {
        if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.Q) power.removeThermalStatusListener(thermalListener)
        context.unregisterReceiver(batteryReceiver)
        context.unregisterReceiver(powerSaveReceiver)
    }

    /** Demo controls: pretend the device is hot / low / in power-save; null returns to the sensors. */
    fun setOverride(state: DeviceState?) {
        override = state
        publish()
    }

    fun current(): DeviceState = override ?: DeviceState(
        platform = "android", thermal = thermal, battery = battery, charging = charging,
        lowPower = power.isPowerSaveMode, device = deviceId()
    )

    /** Forecast of thermal headroom in 10 s (1.0 = SEVERE), API 30+. */
    fun headroom(): Float? =
        if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.R) power.getThermalHeadroom(10).takeIf { !it.isNaN() } else null

    private fun publish() = onChange(current(), headroom())

    companion object {
        /** The id latency budgets and device reports use, e.g. `pixel-7-android-14`. */
        fun deviceId(): String =
            "${Build.MODEL}-android-${Build.VERSION.RELEASE}".replace(Regex("[^A-Za-z0-9_.-]"), "-").lowercase()

        fun thermalName(status: Int): String = when (status) {
            PowerManager.THERMAL_STATUS_NONE -> "none"
            PowerManager.THERMAL_STATUS_LIGHT -> "light"
            PowerManager.THERMAL_STATUS_MODERATE -> "moderate"
            PowerManager.THERMAL_STATUS_SEVERE -> "severe"
            PowerManager.THERMAL_STATUS_CRITICAL -> "critical"
            PowerManager.THERMAL_STATUS_EMERGENCY -> "emergency"
            PowerManager.THERMAL_STATUS_SHUTDOWN -> "shutdown"
            else -> "none"
        }
    }
}
