package dev.slimvit.demo

import dev.slimvit.policy.Choice
import dev.slimvit.policy.DeviceState
import dev.slimvit.policy.Policy
import java.util.concurrent.Executors

/**
 * Runs the bundle's policy on every device-state change and keeps the chosen tier's interpreter
 * ready. The neighbouring tiers (one down, one up) are pre-loaded on a background thread, so a
 * switch swaps a ready interpreter instead of stalling the camera loop on a model load.
 */
class VariantSwitcher(private val store: BundleStore, private val threads: Int = 4) {
    private val policy: Policy = store.manifest.policy
        ?: throw IllegalStateException("the bundle's manifest has no policy; re-export it with slimvit")
    private val loader = Executors.newSingleThreadExecutor()
    private val loaded = HashMap<Int, Classifier>()
    var choice: Choice? = null
        private set

    @Synchronized
    fun update(state: DeviceState, nowMs: Long = android.os.SystemClock.elapsedRealtime()): Choice {
        val next = policy.decide(state, choice, nowMs)
        choice = next
        preload(next.tier)
        return next
    }

    /** The interpreter of the current tier, loading it now only if pre-loading has not. */
    @Synchronized
    fun current(): Classifier {
        val tier = choice?.tier ?: throw IllegalStateException("call update() first")
        return loaded.getOrPut(tier) { open(tier) }
    }

    private fun open(tier: Int): Classifier {
        val variant = store.manifest.variant(policy.tiers[tier])
        val artifact = store.manifest.artifact(variant.id, "tflite")
            ?: throw IllegalStateException("variant ${variant.id} has no tflite artifact in this bundle")
        return Classifier(store.model(artifact), variant, store.manifest, threads)
    }

    private fun preload(tier: Int) {
        val keep = setOf(tier - 1, tier, tier + 1).filter { it in policy.tiers.indices }
        loaded.keys.filter { it !in keep }.forEach { loaded.remove(it)?.close() }
        for (t in keep) if (t !in loaded) loader.execute {
            val c = open(t)
            synchronized(this) { if (t in loaded || t !in keepNow()) c.close() else loaded[t] = c }
        }
    }

    private fun keepNow(): Set<Int> {
        val tier = choice?.tier ?: return emptySet()
        return setOf(tier - 1, tier, tier + 1)
    }

    fun close() {
        loader.shutdownNow()
        synchronized(this) { loaded.values.forEach { it.close() }; loaded.clear() }
    }
}
