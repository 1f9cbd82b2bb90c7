// The pure pack rebuilder: no Android imports, so it also compiles with plain kotlinc on the JVM
// (`make test-kotlin` in the repo root runs the shared pack vectors through it).
plugins {
    id("org.jetbrains.kotlin.jvm")
}

kotlin { jvmToolchain(17) }

// The vectors runner reads JSON with the policy module's reader, compiled into the test sources
// (it is `internal` there, so it is shared as a source file, not as a dependency).
sourceSets["test"].java.srcDir("../policy/src/main/kotlin")

// `./gradlew :pack:conformance` runs the same vectors as `make test-kotlin`.
tasks.register<JavaExec>("conformance") {
    dependsOn("testClasses")
    classpath = sourceSets["test"].runtimeClasspath
    mainClass.set("dev.slimvit.pack.ConformanceKt")
    args(rootProject.file("../conformance/pack_vectors.json").absolutePath)
}
