// swift-tools-version:5.9
import PackageDescription

let package = Package(
    name: "SlimvitPack",
    platforms: [.iOS(.v16), .macOS(.v13)],
    products: [.library(name: "SlimvitPack", targets: ["SlimvitPack"])],
    targets: [
        .target(name: "SlimvitPack"),
        .testTarget(
            name: "SlimvitPackTests",
            dependencies: ["SlimvitPack"],
            resources: [.copy("pack_vectors.json")]
        ),
    ]
)
