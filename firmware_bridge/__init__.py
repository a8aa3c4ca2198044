"""stethoedge.firmware_bridge: wire protocol and host side between stethoscope firmware and the runtime."""
