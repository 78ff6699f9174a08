import Foundation
import JSON
import Testing

@testable import Plugin

/// The DaemonSet's deployment properties: one image reference, least privilege, probes, resources, scheduling.
@Suite("cni-conf/ip-masq-daemonset.yaml: deployment")
struct DaemonSetDeploymentTests {
    let spec: JSONValue
    let install: JSONValue
    let agent: JSONValue

    init() throws {
        spec = try DaemonSetManifestTests.podSpec()
        install = try #require(spec["initContainers"]?.arrayValue?.first)
        agent = try #require(spec["containers"]?.arrayValue?.first)
    }

    func strings(_ value: JSONValue?) -> [String] { value?.arrayValue?.compactMap(\.stringValue) ?? [] }

    @Test func bothContainersRunTheImageOfThisVersion() {
        #expect(
            install["image"] == .string("localhost/ip-masq:\(OperatorCommand.version)"),
            "the tag .ci/image gives this build")
        #expect(agent["image"] == install["image"], "one reference to set")
        #expect(spec["initContainers"]?.arrayValue?.count == 1 && spec["containers"]?.arrayValue?.count == 1)
    }

    @Test func leastPrivilege() {
        for container in [install, agent] {
            let context = container["securityContext"]
            #expect(context?["privileged"] == .bool(false))
            #expect(context?["allowPrivilegeEscalation"] == .bool(false))
            #expect(context?["readOnlyRootFilesystem"] == .bool(true))
            #expect(strings(context?["capabilities"]?["drop"]) == ["ALL"])
        }
        #expect(install["securityContext"]?["capabilities"]?["add"] == nil, "install only writes files")
        #expect(strings(agent["securityContext"]?["capabilities"]?["add"]) == ["NET_ADMIN", "NET_RAW"])
        #expect(spec["automountServiceAccountToken"] == .bool(false))
    }

    @Test func resourcesHaveRequestsAndLimits() {
        for container in [install, agent] {
            for kind in ["requests", "limits"] {
                #expect(
                    container["resources"]?[kind]?["cpu"]?.stringValue != nil
                        && container["resources"]?[kind]?["memory"]?.stringValue != nil)
            }
        }
    }

    @Test func livenessProbeChecksTheAgentsHeartbeatOnAPodVolume() throws {
        let command = strings(agent["command"])
        let heartbeat = try #require(DaemonSetManifestTests.value(of: "--heartbeat", in: command))
        let probe = strings(agent["livenessProbe"]?["exec"]?["command"])
        #expect(probe == ["/ip-masq", "agent", "--healthcheck", "--heartbeat", heartbeat])
        // The probe's command line is one the agent accepts (a usage error would be exit 2, a failing probe forever).
        #expect(
            AgentCommand.run(arguments: Array(probe.dropFirst(2))).exitStatus == 1,
            "no heartbeat here: unhealthy, not a usage error")
        // The heartbeat's directory is a writable pod volume (the root filesystem is read-only), not a node path.
        let mount = try #require(
            agent["volumeMounts"]?.arrayValue?.first {
                heartbeat.hasPrefix(($0["mountPath"]?.stringValue ?? "?") + "/")
            })
        let volume = spec["volumes"]?.arrayValue?.first { $0["name"] == mount["name"] }
        #expect(volume?["emptyDir"] != nil)
        #expect(mount["readOnly"] != .bool(true))
    }

    @Test func schedulingOnEveryNode() throws {
        #expect(spec["hostNetwork"] == .bool(true))
        #expect(
            spec["tolerations"]?.arrayValue?.contains { $0["operator"] == .string("Exists") && $0["key"] == nil }
                == true)
        let daemonSet = try #require(
            try DaemonSetManifestTests.documents().first { $0["kind"] == .string("DaemonSet") })
        #expect(daemonSet["spec"]?["updateStrategy"]?["type"] == .string("RollingUpdate"))
        guard case .int(let grace)? = spec["terminationGracePeriodSeconds"] else {
            Issue.record("no grace period"); return
        }
        #expect(grace >= 5, "the agent stops within a second; the runtime waits this long before SIGKILL")
    }
}
