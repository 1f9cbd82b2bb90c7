import Combine
import Foundation
import SlimvitPolicy
import UIKit

/// Thermal state, Low Power Mode and battery, published on every change.
/// Thermal names follow docs/policy.md: ProcessInfo.ThermalState -> nominal/fair/serious/critical.
final class DeviceMonitor: ObservableObject {
    @Published private(set) var state: DeviceState
    private var observers: [NSObjectProtocol] = []
    var override: DeviceState? { didSet { refresh() } }

    init() {
        UIDevice.current.isBatteryMonitoringEnabled = true
        state = DeviceState(platform: "ios", thermal: "nominal", battery: 100)
        let center = NotificationCenter.default
        for name in [ProcessInfo.thermalStateDidChangeNotification,
                     Notification.Name.NSProcessInfoPowerStateDidChange,
                     UIDevice.batteryLevelDidChangeNotification,
                     UIDevice.batteryStateDidChangeNotification] {
            observers.append(center.addObserver(forName: name, object: nil, queue: .main) { [weak self] _ in self?.refresh() })
        }
        refresh()
    }

    deinit { observers.forEach(NotificationCenter.default.removeObserver) }

    static func thermalName(_ s: ProcessInfo.ThermalState) -> String {
        switch s {
        case .nominal: return "nominal"
        case .fair: return "fair"
        case .serious: return "serious"
        case .critical: return "critical"
        @unknown default: return "critical"
        }
    }

    /// Device id used by latency budgets and device reports, e.g. `iphone15-2-ios-17`.
    static var deviceId: String {
        var info = utsname()
        uname(&info)
        let machine = withUnsafeBytes(of: &info.machine) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let os = UIDevice.current.systemVersion.split(separator: ".").first ?? "0"
        return "\(machine)-ios-\(os)".lowercased().replacingOccurrences(of: ",", with: "-")
    }

    func refresh() {
        if let o = override { state = o; return }
        let level = UIDevice.current.batteryLevel  // -1 when unknown (simulator)
        let battery = UIDevice.current.batteryState
        state = DeviceState(platform: "ios", thermal: Self.thermalName(ProcessInfo.processInfo.thermalState),
                            battery: level < 0 ? 100 : Double(level) * 100,
                            charging: battery == .charging || battery == .full,
                            lowPower: ProcessInfo.processInfo.isLowPowerModeEnabled,
                            device: Self.deviceId)
    }
}
