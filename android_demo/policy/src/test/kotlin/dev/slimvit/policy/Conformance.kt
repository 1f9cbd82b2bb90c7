package dev.slimvit.policy

import java.io.File
import kotlin.system.exitProcess

/**
 * Runs the shared conformance vectors (conformance/policy_vectors.json) through this port.
 * Prints one line per failure and a closing "N passed, M failed" line; exit 1 on any failure.
 */
fun main(args: Array<String>) {
    val path = if (args.isNotEmpty()) args[0] else "conformance/policy_vectors.json"
    val doc = Json.parse(File(path).readText()).obj("vectors")
    if (doc["format"] != "slimvit-policy-vectors") throw JsonException("$path is not a slimvit policy vectors file")
    val policy = Policy.fromJson(doc["policy"].obj("policy"))
    var passed = 0
    var failed = 0
    for (raw in doc["cases"].list("cases")) {
        val case = raw.obj("cases[]")
        val name = case["name"].str("name")
        val platform = case["platform"].str("platform")
        val device = case["device"] as? String
        var previous: Choice? = null
        var ok = true
        for ((i, rawStep) in case["steps"].list("steps").withIndex()) {
            val step = rawStep.obj("steps[]")
            val expect = step["expect"].obj("expect")
            val state = DeviceState(platform, step["thermal"].str("thermal"), step["battery"].num("battery"),
                step["charging"].bool("charging"), step["low_power"].bool("low_power"), device)
            val nowMs = step["t_s"].long("t_s") * 1000L
            val problem: String? = try {
                val c = policy.decide(state, previous, nowMs)
                previous = c
                when {
                    expect.containsKey("error") -> "expected error ${expect["error"]}, got ${c.variant}/${c.rule}"
                    c.variant != expect["variant"] || c.tier != expect["tier"].int("tier") || c.rule != expect["rule"] ->
                        "expected ${expect["variant"]}/${expect["tier"]}/${expect["rule"]}, got ${c.variant}/${c.tier}/${c.rule}"
                    expect.containsKey("reason") && c.reason != expect["reason"] ->
                        "expected reason \"${expect["reason"]}\", got \"${c.reason}\""
                    else -> null
                }
            } catch (e: PolicyException) {
                if (expect["error"] == e.code) null else "unexpected error ${e.code}: ${e.message}"
            }
            if (problem != null) {
                println("FAIL $name step $i: $problem")
                ok = false
                break
            }
        }
        if (ok) passed++ else failed++
    }
    println("$passed passed, $failed failed")
    if (failed > 0) exitProcess(1)
}
