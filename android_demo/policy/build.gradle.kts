// The pure policy module: no Android imports, so it also compiles with plain kotlinc on the JVM
// (`make test-kotlin` in the repo root runs the shared conformance vectors through it).
plugins {
    id("org.jetbrains.kotlin.jvm")
}

kotlin { jvmToolchain(17) }

dependencies {
    testImplementation(kotlin("test"))
}

// `./gradlew :policy:conformance` runs the same vectors as `make test-kotlin`.
tasks.register<JavaExec>("conformance") {
    dependsOn("testClasses")
    classpath = sourceSets["test"].runtimeClasspath
    mainClass.set("dev.slimvit.policy.ConformanceKt")
    args(rootProject.file("../conformance/policy_vectors.json").absolutePath)
}
