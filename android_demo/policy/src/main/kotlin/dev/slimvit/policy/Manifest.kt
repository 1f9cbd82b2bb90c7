package dev.slimvit.policy

/** The parts of a bundle's manifest.json an app needs (see exporter/schema/manifest.schema.json). */
data class Artifact(val format: String, val precision: String, val path: String, val sha256: String, val bytes: Long)

data class VariantInfo(
    val id: String,
    val resolution: Int,
    val inputShape: List<Int>,
    val macs: Long,
    val artifacts: List<Artifact>,
    val top1: Double?
)

class Manifest(
    val schemaVersion: String,
    val bundleVersion: Long,
    val labels: List<String>,
    val mean: List<Double>,
    val std: List<Double>,
    val layout: String,
    val variants: List<VariantInfo>,
    val policy: Policy?
) {
    fun variant(id: String): VariantInfo =
        variants.firstOrNull { it.id == id } ?: throw JsonException("manifest has no variant \"$id\"")

    /** The artifact an app should load for a variant: the first of `preferred` precisions present. */
    fun artifact(id: String, format: String, preferred: List<String> = listOf("fp32", "fp16")): Artifact? {
        val arts = variant(id).artifacts.filter { it.format == format }
        for (p in preferred) arts.firstOrNull { it.precision == p }?.let { return it }
        return arts.firstOrNull()
    }

    companion object {
        private const val SUPPORTED_MAJOR = "1"

        fun parse(text: String): Manifest {
            val d = Json.parse(text).obj("manifest")
            val schema = d["schema_version"].str("schema_version")
            if (schema.substringBefore('.') != SUPPORTED_MAJOR) {
                throw JsonException("manifest schema $schema is not supported (this app reads $SUPPORTED_MAJOR.x)")
            }
            val input = d["input"].obj("input")
            val variants = d["variants"].list("variants").map { raw ->
                val v = raw.obj("variants[]")
                val arts = v["artifacts"].list("artifacts").map { a ->
                    val m = a.obj("artifacts[]")
                    Artifact(m["format"].str("format"), m["precision"].str("precision"), m["path"].str("path"),
                        m["sha256"].str("sha256"), m["bytes"].long("bytes"))
                }
                val fp32 = v["artifacts"].list("artifacts").map { it.obj("artifacts[]") }
                    .firstOrNull { it["precision"] == "fp32" && it["accuracy"] != null }
                Variant(v, arts, fp32?.get("accuracy")?.obj("accuracy")?.get("top1")?.num("top1"))
            }
            return Manifest(
                schemaVersion = schema,
                bundleVersion = d["bundle_version"].long("bundle_version"),
                labels = d["labels"].list("labels").map { it.str("labels[]") },
                mean = input["mean"].list("input.mean").map { it.num("input.mean[]") },
                std = input["std"].list("input.std").map { it.num("input.std[]") },
                layout = input["layout"].str("input.layout"),
                variants = variants,
                policy = d["policy"]?.let { Policy.fromJson(it.obj("policy")) }
            )
        }

        private fun Variant(v: Map<String, Any?>, arts: List<Artifact>, top1: Double?) = VariantInfo(
            id = v["id"].str("id"),
            resolution = v["resolution"].int("resolution"),
            inputShape = v["input_shape"].list("input_shape").map { it.int("input_shape[]") },
            macs = v["macs"].long("macs"),
            artifacts = arts,
            top1 = top1
        )
    }
}
