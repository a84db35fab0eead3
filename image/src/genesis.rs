//! Genesis of a testnet subnet: the subnet record and each node's secrets from a seed
//! (`node::crypto::dealer`), node addresses on the testnet segment (`10.0.0.1..=N`), and one
//! configuration file per node (`node-<i>.cfg`, format in `kernel/src/runtime/config.rs`,
//! shared with the kernel through `#[path]`). A node's secrets are written only to its own
//! file.
//!
//! Beside the configurations, [`Genesis::write_registry`] writes `registry.json`, what
//! governance admits nodes against (issue 9): per node its index, node id, public keys, the
//! report_data its SEV-SNP report must carry (`config::report_data_for_node`, the same
//! function the kernel uses) and the expected launch measurement of `kernel.efi` booted by
//! edk2's AmdSev OVMF for that VM's vCPUs and command line, or `null` with the reason when it
//! cannot be computed (no AmdSev firmware on this host, say). `cargo xtask attest admit`
//! reads it.
//!
//! ```text
//! { "version": 1, "subnet_id": "<principal>", "report_data_binding": "cairn/snp-report-data/v1",
//!   "nodes": [ { "index": 0, "node_id": "<principal>", "ip": "10.0.0.1",
//!                "keys": { "<label>": "<hex>", … },
//!                "report_data": "<128 hex>",
//!                "launch": { "firmware": "<path>"|null, "kernel": "<path>", "vcpus": 1,
//!                            "vcpu_type": "EPYC-v4", "cmdline": "<text>"|null },
//!                "measurement": "<96 hex>"|null, "measurement_missing": null|"<reason>" }, … ] }
//! ```

#[path = "../../kernel/src/runtime/config.rs"]
pub mod config;

use config::NodeConfig;
use node::attest::binding::{NODE_SIGNING_KEY_LABEL, REPORT_DATA_DOMAIN};
use node::attest::measure::{
    snp_launch_digest, vcpu_type_signature, KernelHashes, LaunchInputs, DEFAULT_GUEST_FEATURES,
};
pub use node::consensus::ConsensusParams;
use node::crypto::dealer::SubnetKeys;
use node::crypto::dealer::{deal_subnet, RecordError, SubnetRecord};
use node::types::Time;
use std::fmt;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The testnet segment's first three octets; node `i` is `.i+1`.
pub const TESTNET_PREFIX: [u8; 3] = [10, 0, 0];
/// The segment's prefix length.
pub const TESTNET_PREFIX_LEN: u8 = 24;
/// Most nodes a testnet segment numbers (leaves room for host-side addresses).
pub const TESTNET_NODES_MAX: usize = 64;

/// The registry's file name, beside the node configurations.
pub const REGISTRY_FILE: &str = "registry.json";
/// The registry format version.
pub const REGISTRY_VERSION: u32 = 1;

/// How every node's VM is launched under SEV-SNP, which fixes its expected measurement.
#[derive(Clone, Debug)]
pub struct Launch {
    /// edk2's AmdSev OVMF (the build with the SNP kernel hashes page), if this host has it.
    pub firmware: Option<PathBuf>,
    /// The PE32+ kernel OVMF measures and boots (`-kernel`).
    pub kernel_efi: PathBuf,
    pub vcpus: u32,
    /// QEMU's `-cpu` model name (its CPUID signature goes into each VMSA).
    pub vcpu_type: String,
    /// The `-append` command line, if any.
    pub cmdline: Option<String>,
}

impl Launch {
    /// The expected SNP launch measurement (as `cargo xtask attest measure` and
    /// `sev-snp-measure --mode snp` compute it, no initrd), or why there is none.
    pub fn measurement(&self) -> Result<[u8; 48], String> {
        let firmware_path = self.firmware.as_ref().ok_or(
            "no AmdSev OVMF on this host (target/ci-ovmf-amdsev/OVMF.amdsev.fd: \
             bash .ci/ovmf-amdsev.sh; or CAIRN_OVMF_AMDSEV)",
        )?;
        let firmware = std::fs::read(firmware_path)
            .map_err(|e| format!("{}: {e}", firmware_path.display()))?;
        let kernel = std::fs::read(&self.kernel_efi)
            .map_err(|e| format!("{}: {e}", self.kernel_efi.display()))?;
        let vcpu_signature = vcpu_type_signature(&self.vcpu_type)
            .ok_or_else(|| format!("unknown vCPU type {}", self.vcpu_type))?;
        let inputs = LaunchInputs {
            kernel_hashes: Some(KernelHashes::new(&kernel, None, self.cmdline.as_deref())),
            vcpus: self.vcpus,
            vcpu_signature,
            guest_features: DEFAULT_GUEST_FEATURES,
        };
        snp_launch_digest(&firmware, &inputs)
            .map_err(|e| format!("{}: {e}", firmware_path.display()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A JSON string literal.
fn json_str(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_opt(text: Option<&str>) -> String {
    text.map_or_else(|| "null".to_string(), json_str)
}

/// Why genesis failed.
#[derive(Debug)]
pub enum GenesisError {
    Nodes(usize),
    Record(RecordError),
    Io(PathBuf, std::io::Error),
    /// A node's keys cannot be bound into report_data.
    Binding(node::attest::binding::BindingError),
    /// The addresses given for the nodes are not usable ([`Addressing`]).
    Addressing(String),
}

impl fmt::Display for GenesisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GenesisError::Nodes(n) => write!(f, "{n} nodes: expected 1..={TESTNET_NODES_MAX}"),
            GenesisError::Record(e) => write!(f, "subnet record: {e}"),
            GenesisError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            GenesisError::Binding(e) => write!(f, "report_data: {e}"),
            GenesisError::Addressing(why) => write!(f, "addresses: {why}"),
        }
    }
}

impl std::error::Error for GenesisError {}

/// The nodes' IPv4 addresses on their common segment (P2P runs there), one per node in node
/// order, and the segment's prefix length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addressing {
    pub ips: Vec<[u8; 4]>,
    pub prefix_len: u8,
}

impl Addressing {
    /// The testnet's: node `i` at [`node_ip`]`(i)`, /[`TESTNET_PREFIX_LEN`].
    pub fn testnet(n: usize) -> Addressing {
        Addressing {
            ips: (0..n).map(node_ip).collect(),
            prefix_len: TESTNET_PREFIX_LEN,
        }
    }

    /// Parses `a.b.c.d,a.b.c.d,…` (one address per node) and a prefix length, and checks
    /// them ([`Addressing::check`]).
    pub fn parse(ips: &str, prefix_len: u8) -> Result<Addressing, GenesisError> {
        let ips = ips
            .split(',')
            .map(|a| {
                a.trim()
                    .parse::<std::net::Ipv4Addr>()
                    .map(|ip| ip.octets())
                    .map_err(|_| GenesisError::Addressing(format!("{a:?} is not an IPv4 address")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let addressing = Addressing { ips, prefix_len };
        addressing.check(addressing.ips.len())?;
        Ok(addressing)
    }

    /// `n` addresses, distinct, on one segment of `prefix_len` (1..=30), none of them the
    /// segment's network or broadcast address.
    pub fn check(&self, n: usize) -> Result<(), GenesisError> {
        let bad = |why: String| Err(GenesisError::Addressing(why));
        if self.ips.len() != n {
            return bad(format!("{} addresses for {n} nodes", self.ips.len()));
        }
        if !(1..=30).contains(&self.prefix_len) {
            return bad(format!(
                "prefix length {} (expected 1..=30)",
                self.prefix_len
            ));
        }
        let mask = u32::MAX << (32 - u32::from(self.prefix_len));
        let as_u32: Vec<u32> = self.ips.iter().map(|ip| u32::from_be_bytes(*ip)).collect();
        let net = as_u32.first().map_or(0, |a| a & mask);
        for (i, &a) in as_u32.iter().enumerate() {
            let ip = std::net::Ipv4Addr::from(a);
            if a & mask != net {
                return bad(format!(
                    "node {i}'s {ip} is not on node 0's /{} segment",
                    self.prefix_len
                ));
            }
            if a & !mask == 0 || a & !mask == !mask {
                return bad(format!(
                    "node {i}'s {ip} is the segment's network or broadcast"
                ));
            }
            if as_u32[..i].contains(&a) {
                return bad(format!("{ip} is given twice"));
            }
        }
        Ok(())
    }
}

/// The address of node `i` on the testnet segment.
pub fn node_ip(i: usize) -> [u8; 4] {
    [
        TESTNET_PREFIX[0],
        TESTNET_PREFIX[1],
        TESTNET_PREFIX[2],
        (i + 1) as u8,
    ]
}

/// A dealt subnet: the public record and every node's configuration.
pub struct Genesis {
    pub record: SubnetRecord,
    pub nodes: Vec<NodeConfig>,
}

impl Genesis {
    /// Deals `n` nodes from `seed` with genesis time `genesis_time_ns` (Unix ns).
    pub fn new(
        seed: &[u8; 32],
        n: usize,
        genesis_time_ns: u64,
        params: ConsensusParams,
    ) -> Result<Genesis, GenesisError> {
        if n == 0 || n > TESTNET_NODES_MAX {
            return Err(GenesisError::Nodes(n));
        }
        let (record, secrets) =
            deal_subnet(seed, n, Time(genesis_time_ns)).map_err(GenesisError::Record)?;
        let Addressing { ips, prefix_len } = Addressing::testnet(n);
        let nodes = secrets
            .into_iter()
            .map(|s| NodeConfig {
                index: s.index,
                ips: ips.clone(),
                prefix_len,
                record: record.clone(),
                secrets: s,
                params,
            })
            .collect();
        Ok(Genesis { record, nodes })
    }

    /// The nodes at `addressing` instead of the testnet's addresses (checked first).
    pub fn with_addressing(mut self, addressing: &Addressing) -> Result<Genesis, GenesisError> {
        addressing.check(self.nodes.len())?;
        for node in &mut self.nodes {
            node.ips.clone_from(&addressing.ips);
            node.prefix_len = addressing.prefix_len;
        }
        Ok(self)
    }

    /// DER of the subnet (root) public key, as `/api/v2/status` serves it.
    pub fn root_key_der(&self) -> Result<Vec<u8>, GenesisError> {
        let keys = node::crypto::dealer::SubnetKeys::from_record(&self.record)
            .map_err(GenesisError::Record)?;
        Ok(keys.subnet.group_key.to_der().to_vec())
    }

    /// Writes `dir/node-<i>.cfg` for every node; returns the paths in node order.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, GenesisError> {
        std::fs::create_dir_all(dir).map_err(|e| GenesisError::Io(dir.to_path_buf(), e))?;
        let mut paths = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let path = dir.join(format!("node-{i}.cfg"));
            std::fs::write(&path, node.encode()).map_err(|e| GenesisError::Io(path.clone(), e))?;
            paths.push(path);
        }
        Ok(paths)
    }
}

impl Genesis {
    /// The registry (module doc) as JSON text.
    pub fn registry_json(&self, launch: &Launch) -> Result<String, GenesisError> {
        let keys = SubnetKeys::from_record(&self.record).map_err(GenesisError::Record)?;
        let measurement = launch.measurement();
        let mut out = String::new();
        let _ = writeln!(out, "{{");
        let _ = writeln!(out, "  \"version\": {REGISTRY_VERSION},");
        let _ = writeln!(
            out,
            "  \"subnet_id\": {},",
            json_str(&keys.subnet_id.0.to_text())
        );
        let binding = String::from_utf8_lossy(REPORT_DATA_DOMAIN);
        let _ = writeln!(out, "  \"report_data_binding\": {},", json_str(&binding));
        let _ = writeln!(out, "  \"nodes\": [");
        for (i, node) in self.record.nodes.iter().enumerate() {
            let report_data = config::report_data_for_node(node).map_err(GenesisError::Binding)?;
            let ip = self
                .nodes
                .first()
                .and_then(|c| c.ips.get(i).copied())
                .unwrap_or_else(|| node_ip(i));
            let mut key_list = vec![(NODE_SIGNING_KEY_LABEL, hex(&node.node_key.0))];
            key_list.extend(
                config::report_keys(node)
                    .iter()
                    .map(|(label, key)| (*label, hex(key))),
            );
            let key_text: Vec<String> = key_list
                .iter()
                .map(|(label, key)| format!("\"{label}\": \"{key}\""))
                .collect();
            let node_id = keys.node_ids.get(i).map(|id| id.0.to_text());
            let _ = writeln!(out, "    {{");
            let _ = writeln!(out, "      \"index\": {i},");
            let _ = writeln!(out, "      \"node_id\": {},", json_opt(node_id.as_deref()));
            let _ = writeln!(
                out,
                "      \"ip\": \"{}.{}.{}.{}\",",
                ip[0], ip[1], ip[2], ip[3]
            );
            let _ = writeln!(out, "      \"keys\": {{ {} }},", key_text.join(", "));
            let _ = writeln!(out, "      \"report_data\": \"{}\",", hex(&report_data));
            let firmware = launch.firmware.as_ref().map(|p| p.display().to_string());
            let _ = writeln!(
                out,
                "      \"launch\": {{ \"firmware\": {}, \"kernel\": {}, \"vcpus\": {}, \
                 \"vcpu_type\": {}, \"cmdline\": {} }},",
                json_opt(firmware.as_deref()),
                json_str(&launch.kernel_efi.display().to_string()),
                launch.vcpus,
                json_str(&launch.vcpu_type),
                json_opt(launch.cmdline.as_deref())
            );
            let (m, missing) = match &measurement {
                Ok(m) => (format!("\"{}\"", hex(m)), "null".to_string()),
                Err(why) => ("null".to_string(), json_str(why)),
            };
            let _ = writeln!(out, "      \"measurement\": {m},");
            let _ = writeln!(out, "      \"measurement_missing\": {missing}");
            let last = i + 1 == self.record.nodes.len();
            let _ = writeln!(out, "    }}{}", if last { "" } else { "," });
        }
        let _ = writeln!(out, "  ]");
        let _ = writeln!(out, "}}");
        Ok(out)
    }

    /// Writes `dir/registry.json` ([`Genesis::registry_json`]); returns its path.
    pub fn write_registry(&self, dir: &Path, launch: &Launch) -> Result<PathBuf, GenesisError> {
        std::fs::create_dir_all(dir).map_err(|e| GenesisError::Io(dir.to_path_buf(), e))?;
        let path = dir.join(REGISTRY_FILE);
        let text = self.registry_json(launch)?;
        std::fs::write(&path, text).map_err(|e| GenesisError::Io(path.clone(), e))?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::config::ConfigError;
    use super::*;

    /// A configuration written at the start of a zeroed partition is found by its header, and
    /// the bytes the header names decode to it; a zeroed partition holds none.
    #[test]
    fn a_configuration_at_the_start_of_a_partition_is_found_by_its_header() {
        let g = Genesis::new(&[5; 32], 2, 1, ConsensusParams::FAST).unwrap();
        let bytes = g.nodes[1].encode();
        let mut partition = vec![0u8; bytes.len() + 4096];
        assert_eq!(NodeConfig::stored_len(&partition), None);
        partition[..bytes.len()].copy_from_slice(&bytes);
        let len = NodeConfig::stored_len(&partition).unwrap().unwrap();
        assert_eq!(len, bytes.len());
        assert_eq!(NodeConfig::decode(&partition[..len]).unwrap().index, 1);
        partition[10..14].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            NodeConfig::stored_len(&partition),
            Some(Err(ConfigError::TooLarge))
        );
        assert_eq!(
            NodeConfig::stored_len(&bytes[..12]),
            Some(Err(ConfigError::TooShort))
        );
    }

    #[test]
    fn nodes_can_be_given_their_own_addresses_on_one_segment() {
        let addr = Addressing::parse("192.0.2.10, 192.0.2.11,192.0.2.12,192.0.2.200", 24).unwrap();
        let g = Genesis::new(&[9; 32], 4, 1, ConsensusParams::FAST)
            .unwrap()
            .with_addressing(&addr)
            .unwrap();
        for (i, node) in g.nodes.iter().enumerate() {
            let back = NodeConfig::decode(&node.encode()).unwrap();
            assert_eq!(back.ips, addr.ips);
            assert_eq!(back.prefix_len, 24);
            assert_eq!(back.index as usize, i);
        }
        let launch = Launch {
            firmware: None,
            kernel_efi: PathBuf::from("kernel.efi"),
            vcpus: 1,
            vcpu_type: "EPYC-v4".into(),
            cmdline: None,
        };
        let json = g.registry_json(&launch).unwrap();
        let ips: Vec<&str> = json
            .lines()
            .filter_map(|l| l.trim().strip_prefix("\"ip\": "))
            .collect();
        assert_eq!(
            ips,
            [
                "\"192.0.2.10\",",
                "\"192.0.2.11\",",
                "\"192.0.2.12\",",
                "\"192.0.2.200\","
            ]
        );

        let refused = [
            ("192.0.2.10,192.0.2.11", 24, 4, "2 addresses for 4 nodes"),
            ("192.0.2.10,192.0.3.11", 24, 2, "not on node 0's /24"),
            ("192.0.2.10,192.0.2.10", 24, 2, "given twice"),
            ("192.0.2.0,192.0.2.1", 24, 2, "network or broadcast"),
            ("192.0.2.1,192.0.2.255", 24, 2, "network or broadcast"),
            ("192.0.2.1,192.0.2.2", 31, 2, "prefix length 31"),
            (
                "192.0.2.1,banana",
                24,
                2,
                "\"banana\" is not an IPv4 address",
            ),
        ];
        for (ips, prefix, n, why) in refused {
            let err = Addressing::parse(ips, prefix)
                .and_then(|a| a.check(n))
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{ips}/{prefix} for {n}: {err}");
        }
        let three = Addressing::parse("192.0.2.1,192.0.2.2,192.0.2.3", 24).unwrap();
        let two = Genesis::new(&[9; 32], 2, 1, ConsensusParams::FAST).unwrap();
        assert!(two.with_addressing(&three).is_err());
    }

    #[test]
    fn configs_round_trip_and_hold_only_their_own_secrets() {
        let g = Genesis::new(&[7; 32], 4, 1, ConsensusParams::FAST).unwrap();
        for (i, node) in g.nodes.iter().enumerate() {
            let bytes = node.encode();
            let back = NodeConfig::decode(&bytes).unwrap();
            assert_eq!(back.index as usize, i);
            assert_eq!(back.ips[i], node_ip(i));
            assert_eq!(back.record, g.record);
            assert_eq!(back.secrets.node_seed, node.secrets.node_seed);
            for (j, other) in g.nodes.iter().enumerate() {
                if j != i {
                    let secret = &other.secrets.subnet_share_secret.0[..];
                    assert!(!bytes.windows(secret.len()).any(|w| w == secret));
                }
            }
        }
        assert_eq!(g.root_key_der().unwrap().len(), 133);
    }

    #[test]
    fn registry_lists_each_nodes_keys_and_report_data() {
        let g = Genesis::new(&[3; 32], 4, 1, ConsensusParams::FAST).unwrap();
        let launch = Launch {
            firmware: None,
            kernel_efi: PathBuf::from("/nonexistent/kernel.efi"),
            vcpus: 1,
            vcpu_type: "EPYC-v4".to_string(),
            cmdline: Some("a \"quoted\" \\ line".to_string()),
        };
        let text = g.registry_json(&launch).unwrap();
        for (i, node) in g.nodes.iter().enumerate() {
            let rd = node.report_data().unwrap().unwrap();
            assert!(text.contains(&format!("\"report_data\": \"{}\"", hex(&rd))));
            assert!(text.contains(&format!("\"index\": {i},")));
            let own = &g.record.nodes[i];
            assert!(text.contains(&hex(&own.node_key.0)));
            assert!(text.contains(&hex(&own.subnet_key_share.0)));
        }
        // Different nodes, different bindings.
        let a = g.nodes[0].report_data().unwrap().unwrap();
        let b = g.nodes[1].report_data().unwrap().unwrap();
        assert_ne!(a, b);
        assert_eq!(text.matches("\"measurement\": null").count(), 4);
        assert!(text.contains("no AmdSev OVMF"), "{text}");
        assert!(
            text.contains(r#""cmdline": "a \"quoted\" \\ line""#),
            "{text}"
        );
        // No secret reaches the registry.
        for node in &g.nodes {
            for secret in [
                &node.secrets.node_seed.0,
                &node.secrets.subnet_share_secret.0,
            ] {
                assert!(!text.contains(&hex(secret)));
            }
        }
    }

    #[test]
    fn fw_cfg_directory_is_searched_within_bounds() {
        use super::config::{fw_cfg_find, FwCfgError, FwCfgFile, FW_CFG_CONFIG_NAME};
        fn entry(size: u32, select: u16, name: &str) -> Vec<u8> {
            let mut e = size.to_be_bytes().to_vec();
            e.extend_from_slice(&select.to_be_bytes());
            e.extend_from_slice(&[0, 0]);
            let mut field = [0u8; 56];
            field[..name.len()].copy_from_slice(name.as_bytes());
            e.extend_from_slice(&field);
            e
        }
        let find = |dir: &[u8]| {
            let mut at = 0usize;
            let mut read = |buf: &mut [u8]| {
                for b in buf.iter_mut() {
                    // Past the end fw_cfg reads as zeros.
                    *b = dir.get(at).copied().unwrap_or(0);
                    at += 1;
                }
            };
            fw_cfg_find(&mut read, FW_CFG_CONFIG_NAME)
        };
        let mut dir = 3u32.to_be_bytes().to_vec();
        dir.extend(entry(100, 0x20, "etc/acpi/tables"));
        dir.extend(entry(2968, 0x27, "opt/cairn/node.cfg"));
        dir.extend(entry(8, 0x28, "opt/cairn/node.cfg.bak"));
        assert_eq!(
            find(&dir),
            Ok(FwCfgFile {
                select: 0x27,
                size: 2968
            })
        );
        let mut prefix = 1u32.to_be_bytes().to_vec();
        prefix.extend(entry(8, 0x28, "opt/cairn/node.cfg.bak"));
        assert_eq!(find(&prefix), Err(FwCfgError::NoFile));
        let mut empty = 1u32.to_be_bytes().to_vec();
        empty.extend(entry(0, 0x27, "opt/cairn/node.cfg"));
        assert_eq!(find(&empty), Err(FwCfgError::Empty));
        let mut huge = 1u32.to_be_bytes().to_vec();
        huge.extend(entry(u32::MAX, 0x27, "opt/cairn/node.cfg"));
        assert_eq!(find(&huge), Err(FwCfgError::TooLarge(u32::MAX)));
        // A count beyond the bound is refused before any entry is read; a truncated
        // directory (zeros) finds nothing; a 56-byte name with no NUL is compared whole.
        assert_eq!(
            find(&u32::MAX.to_be_bytes()),
            Err(FwCfgError::TooManyFiles(u32::MAX))
        );
        assert_eq!(find(&5u32.to_be_bytes()), Err(FwCfgError::NoFile));
        let mut long = 1u32.to_be_bytes().to_vec();
        long.extend(entry(8, 0x29, &"x".repeat(56)));
        assert_eq!(find(&long), Err(FwCfgError::NoFile));
        assert_eq!(find(&[]), Err(FwCfgError::NoFile));
    }

    #[test]
    fn bad_files_are_typed_errors() {
        let g = Genesis::new(&[1; 32], 1, 1, ConsensusParams::FAST).unwrap();
        let good = g.nodes[0].encode();
        assert_eq!(NodeConfig::decode(&[]).err(), Some(ConfigError::TooShort));
        let mut bad = good.clone();
        bad[0] ^= 1;
        assert_eq!(NodeConfig::decode(&bad).err(), Some(ConfigError::BadMagic));
        let mut bad = good.clone();
        let last = bad.len() - 40;
        bad[last] ^= 1;
        assert_eq!(
            NodeConfig::decode(&bad).err(),
            Some(ConfigError::BadChecksum)
        );
        let mut bad = good.clone();
        bad[8] = 9;
        assert_eq!(
            NodeConfig::decode(&bad).err(),
            Some(ConfigError::UnsupportedVersion(9))
        );
        for cut in 0..good.len() {
            assert!(NodeConfig::decode(&good[..cut]).is_err());
        }
    }
}
