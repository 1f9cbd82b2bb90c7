// swift-tools-version:5.9
import PackageDescription

let package = Package(
    name: "SlimvitPolicy",
    platforms: [.iOS(.v16), .macOS(.v13)],
    products: [.library(name: "SlimvitPolicy", targets: ["SlimvitPolicy"])],
    targets: [
        .target(name: "SlimvitPolicy"),
        .testTarget(
            name: "SlimvitPolicyTests",
            dependencies: ["SlimvitPolicy"],
            resources: [.copy("policy_vectors.json")]
        ),
    ]
)
