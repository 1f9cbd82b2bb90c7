import SlimvitPolicy
import SwiftUI

struct ContentView: View {
    @EnvironmentObject var model: DemoModel

    var body: some View {
        let s = model.monitor.state
        List {
            Section("Prediction") {
                Text(model.prediction).font(.largeTitle)
                Text(String(format: "%.2f ms", model.latencyMs))
            }
            Section("Variant") {
                Text(model.choice?.variant ?? "-").font(.headline)
                Text("tier \(model.choice?.tier ?? -1) · \(model.choice?.rule ?? "-")")
                Text(model.choice?.reason ?? "").font(.footnote)
            }
            Section("Device") {
                Text("thermal: \(s.thermal)")
                Text(String(format: "battery: %.0f%%  charging: %@  low power: %@", s.battery,
                            s.charging ? "yes" : "no", s.lowPower ? "yes" : "no"))
            }
            Section("Simulate") {
                Button("Heat: serious") { model.monitor.override = DeviceState(platform: "ios", thermal: "serious", battery: s.battery) }
                Button("Battery 15%") { model.monitor.override = DeviceState(platform: "ios", thermal: s.thermal, battery: 15) }
                Button("Use real sensors") { model.monitor.override = nil }
                Button("Profile all variants") { Task { _ = try? await model.profile() } }
            }
            if !model.status.isEmpty { Text(model.status).font(.footnote) }
        }
    }
}
