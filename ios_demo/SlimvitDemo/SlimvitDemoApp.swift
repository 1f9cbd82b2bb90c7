import SwiftUI

@main
struct SlimvitDemoApp: App {
    @StateObject private var model = DemoModel()

    var body: some Scene {
        WindowGroup { ContentView().environmentObject(model) }
    }
}
