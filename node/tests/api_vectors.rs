//! Acceptance 1 of issue 6: every vector of `ic-spec-vectors` (request ids, hash trees, the
//! BLS signing vector) and every certificate of `ic-certificates` with its recorded outcome.

use node::api::cbor::{self, Value, Writer};
use node::api::certificate::{self, CertError, Certificate, Effective};
use node::api::hash_tree::{HashTree, Lookup};
use node::api::request_id;
use node::crypto::bls;
use node::types::Principal;
use serde_json::Value as Json;

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/testdata/ic-spec-vectors/"
);
const CERTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/testdata/ic-certificates/"
);

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn json(path: &str) -> Json {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Writes a vector value (`{"blob":hex}`, `{"text":…}`, `{"nat":…}`, `{"int":…}`,
/// `{"array":[…]}`, `{"map":{…}}`) as CBOR, so the hash is computed from decoded CBOR exactly
/// as for a request.
fn write_value(w: &mut Writer, v: &Json) {
    let (kind, inner) = v.as_object().unwrap().iter().next().unwrap();
    let num = |x: &Json| -> i128 {
        match x {
            Json::String(s) => s.parse().unwrap(),
            Json::Number(n) => n
                .as_i64()
                .map(i128::from)
                .unwrap_or_else(|| n.as_u64().unwrap().into()),
            _ => panic!("bad number {x}"),
        }
    };
    match kind.as_str() {
        "blob" => {
            w.bytes(&hex(inner.as_str().unwrap()));
        }
        "text" => {
            w.text(inner.as_str().unwrap());
        }
        "nat" => {
            w.u64(u64::try_from(num(inner)).unwrap());
        }
        "int" => {
            let n = num(inner);
            if n >= 0 {
                w.u64(n as u64);
            } else {
                // Major type 1 for negatives: re-encode through a decoded value.
                let m = (-1 - n) as u64;
                let mut head = Writer::new();
                head.u64(m);
                let mut bytes = head.into_bytes();
                bytes[0] |= 0x20;
                w.raw(&bytes);
            }
        }
        "array" => {
            let items = inner.as_array().unwrap();
            w.array(items.len());
            items.iter().for_each(|i| write_value(w, i));
        }
        "map" => write_map(
            w,
            inner
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.as_str(), v)),
        ),
        other => panic!("unknown kind {other}"),
    }
}

fn write_map<'a>(w: &mut Writer, pairs: impl ExactSizeIterator<Item = (&'a str, &'a Json)>) {
    w.map(pairs.len());
    for (k, v) in pairs {
        w.text(k);
        write_value(w, v);
    }
}

#[test]
fn request_id_vectors() {
    let d = json(&format!("{VECTORS}request_id.json"));
    let mut count = 0;
    for case in d["request_ids"].as_array().unwrap() {
        let mut w = Writer::self_describing();
        if let Some(map) = case.get("map") {
            write_map(
                &mut w,
                map.as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.as_str(), v)),
            );
        } else {
            let list = case["map_list"].as_array().unwrap();
            let pairs = list.iter().map(|p| (p[0].as_str().unwrap(), &p[1]));
            write_map(&mut w, pairs);
        }
        let bytes = w.into_bytes();
        let value = cbor::decode(&bytes).unwrap();
        let id = request_id::request_id(&value).unwrap();
        assert_eq!(
            to_hex(&id),
            case["expected_request_id"].as_str().unwrap(),
            "{}",
            case["name"]
        );
        // Intermediate field hashes of the spec example.
        if let Some(fields) = case.get("expected_field_hashes") {
            let pairs = value.as_map().unwrap();
            for (key, hashes) in fields.as_object().unwrap() {
                let (_, v) = pairs
                    .iter()
                    .find(|(k, _)| k.as_text() == Some(key))
                    .unwrap();
                assert_eq!(
                    to_hex(&request_id::sha256(key.as_bytes())),
                    hashes[0].as_str().unwrap()
                );
                assert_eq!(
                    to_hex(&request_id::hash_value(v).unwrap()),
                    hashes[1].as_str().unwrap()
                );
            }
        }
        count += 1;
    }
    assert_eq!(count, 11);
    for case in d["array_hashes"]["vectors"].as_array().unwrap() {
        let mut w = Writer::new();
        write_value(&mut w, &case["value"]);
        let bytes = w.into_bytes();
        let h = request_id::hash_value(&cbor::decode(&bytes).unwrap()).unwrap();
        assert_eq!(to_hex(&h), case["expected_hash"].as_str().unwrap());
    }
    for (kind, signed) in [("unsigned", false), ("signed", true)] {
        for case in d["leb128"][kind].as_array().unwrap() {
            let mut out = Vec::new();
            let n = case["n"].as_i64().unwrap();
            if signed {
                request_id::sleb128(n.into(), &mut out);
            } else {
                request_id::uleb128(n as u64, &mut out);
                assert_eq!(certificate::decode_uleb128(&out), Some(n as u64));
            }
            assert_eq!(to_hex(&out), case["hex"].as_str().unwrap());
        }
    }
}

#[test]
fn hash_tree_vectors() {
    let d = json(&format!("{VECTORS}hash_tree.json"));
    let expected = d["expected_root_hash"].as_str().unwrap();
    let parse = |key: &str| {
        let bytes = hex(d[key].as_str().unwrap());
        let tree = HashTree::from_cbor(&cbor::decode(&bytes).unwrap()).unwrap();
        // Re-encoding gives the same bytes.
        let mut w = Writer::new();
        tree.encode(&mut w);
        assert_eq!(w.as_slice(), &bytes[..]);
        tree
    };
    let full = parse("full_tree_cbor");
    let pruned = parse("pruned_tree_cbor");
    assert_eq!(to_hex(&full.digest()), expected);
    assert_eq!(to_hex(&pruned.digest()), expected);
    let check = |tree: &HashTree, key: &str| {
        for case in d[key].as_array().unwrap() {
            let path: Vec<&[u8]> = case["path"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_str().unwrap().as_bytes())
                .collect();
            let got = tree.lookup(&path);
            let want = match case["result"].as_str().unwrap() {
                "Found" => Lookup::Found(case["value"].as_str().unwrap().as_bytes()),
                "Absent" => Lookup::Absent,
                "Unknown" => Lookup::Unknown,
                other => panic!("{other}"),
            };
            assert_eq!(got, want, "{key} {path:?}");
        }
    };
    check(&pruned, "pruned_lookups");
    check(&full, "full_tree_lookups_computed_by_us");
}

/// The signing vector (the verify vectors are in `crypto::bls`'s own tests).
#[test]
fn bls_signing_vector() {
    let d = json(&format!("{VECTORS}bls12_381_sig.json"));
    for case in d["sign"].as_array().unwrap() {
        let sk: [u8; 32] = hex(case["secret_key"].as_str().unwrap())
            .try_into()
            .unwrap();
        let sk = bls::SecretKey::from_bytes(&sk).unwrap();
        let sig = sk.sign(&hex(case["msg"].as_str().unwrap()));
        assert_eq!(
            to_hex(sig.as_bytes()),
            case["expected_sig"].as_str().unwrap()
        );
    }
}

fn expected_error(reason: &str) -> CertError {
    match reason {
        r if r.starts_with("not authorized (no shard)") => CertError::NotAuthorizedNoShard,
        r if r.starts_with("not authorized (canister outside ranges)") => {
            CertError::NotAuthorizedOutsideRanges
        }
        r if r.starts_with("canister ranges not found") => CertError::CanisterRangesNotFound,
        "delegation for another subnet" => CertError::DelegationForAnotherSubnet,
        "BLS signature invalid" => CertError::BlsInvalid,
        "nested delegation" => CertError::NestedDelegation,
        other => panic!("unmapped reason {other}"),
    }
}

#[test]
fn mainnet_certificates_verify_as_recorded() {
    let d = json(&format!("{CERTS}expected.json"));
    let default_key = std::fs::read(format!("{CERTS}{}", d["root_key"].as_str().unwrap())).unwrap();
    let mut checks = 0;
    let mut reencoded = 0;
    for (name, case) in d["cases"].as_object().unwrap() {
        let files = &case["files"];
        let cert =
            std::fs::read(format!("{CERTS}{}", files["certificate"].as_str().unwrap())).unwrap();
        if let Some(resp) = files.get("response") {
            // The response body is `{certificate: bytes}`; the bytes are the certificate file.
            let body = std::fs::read(format!("{CERTS}{}", resp.as_str().unwrap())).unwrap();
            let v = cbor::decode(&body).unwrap();
            let rec = cbor::Record::new(v.untagged()).unwrap();
            assert_eq!(rec.bytes("certificate").unwrap(), &cert[..], "{name}");
        }
        let key_der = match files.get("root_key") {
            Some(k) => std::fs::read(format!("{CERTS}{}", k.as_str().unwrap())).unwrap(),
            None => default_key.clone(),
        };
        let root_key = bls::PublicKey::from_der(&key_der).unwrap();
        for check in case["checks"].as_array().unwrap() {
            let eff = &check["effective"];
            let effective = match (eff.get("canister"), eff.get("subnet")) {
                (Some(c), _) => {
                    Effective::Canister(Principal::from_text(c.as_str().unwrap()).unwrap())
                }
                (_, Some(s)) => {
                    Effective::Subnet(Principal::from_text(s.as_str().unwrap()).unwrap())
                }
                _ => panic!("no effective id"),
            };
            let detail = &check["detail"];
            let parsed = Certificate::parse(&cert).unwrap();
            assert_eq!(
                to_hex(&parsed.root_hash()),
                detail["root_hash"].as_str().unwrap(),
                "{name}"
            );
            assert_eq!(
                parsed.time_ns().unwrap(),
                detail["time_ns"].as_u64().unwrap(),
                "{name}"
            );
            if let Some(sub) = detail.get("delegation_subnet") {
                let dlg = parsed.delegation.as_ref().unwrap();
                assert_eq!(dlg.subnet_id.to_text(), sub.as_str().unwrap());
            }
            let verdict = certificate::verify(&cert, &root_key, effective);
            match check["expected"].as_str().unwrap() {
                "ACCEPT" => assert!(verdict.is_ok(), "{name} {eff}: {verdict:?}"),
                "REJECT" => {
                    let want = expected_error(detail["error"].as_str().unwrap());
                    assert_eq!(verdict.err(), Some(want), "{name} {eff}");
                }
                other => panic!("{other}"),
            }
            // Re-encoding a parsed certificate is byte-identical to the IC's current encoding
            // (the 2022 certificates predate the self-describe tag on certificates).
            if cert.starts_with(&[0xd9, 0xd9, 0xf7]) {
                assert_eq!(parsed.encode(), cert, "{name}");
                reencoded += 1;
            }
            checks += 1;
        }
    }
    assert_eq!(checks, 19);
    assert!(reencoded >= 10, "{reencoded}");
}

/// Certificates we build verify with our verifier, root-signed and delegated; tampering fails.
#[test]
fn own_certificates_verify() {
    use node::api::labeled_tree::{HashedTree, LabeledTree};
    let root_sk = bls::SecretKey::from_ikm(&[1; 32]);
    let root_pk = root_sk.public_key();
    let subnet_sk = bls::SecretKey::from_ikm(&[2; 32]);
    let subnet_id = Principal::self_authenticating(&subnet_sk.public_key().to_der());
    let canister = Principal::from_canister_index(5);
    let ranges = [(
        Principal::from_canister_index(0),
        Principal::from_canister_index(0xffff),
    )];

    let mut state = LabeledTree::empty();
    state.insert(&[b"time".as_slice()], vec![0x80, 0x01]);
    let state = HashedTree::new(state);
    let sign_root = |m: &[u8]| *root_sk.sign(m).as_bytes();
    let sign_subnet = |m: &[u8]| *subnet_sk.sign(m).as_bytes();

    // Root-signed.
    let cert = certificate::certify(state.to_hash_tree(), sign_root, None);
    let ok = certificate::verify(&cert, &root_pk, Effective::Canister(canister)).unwrap();
    assert_eq!(ok.time_ns(), Ok(128));
    assert_eq!(certificate::check_freshness(&ok, 128 + 10, 10), Ok(()));
    assert_eq!(
        certificate::check_freshness(&ok, 128 + 11, 10),
        Err(CertError::Stale)
    );
    let wrong = certificate::verify(
        &cert,
        &subnet_sk.public_key(),
        Effective::Canister(canister),
    );
    assert_eq!(wrong.err(), Some(CertError::BlsInvalid));

    // Delegated: the root certifies the subnet key and ranges (both forms).
    for sharded in [true, false] {
        let mut dt = LabeledTree::empty();
        let sid = subnet_id.to_vec();
        dt.insert(
            &[b"subnet".as_slice(), &sid, b"public_key"],
            subnet_sk.public_key().to_der().to_vec(),
        );
        let enc = certificate::encode_ranges(&ranges);
        if sharded {
            dt.insert(
                &[b"canister_ranges".as_slice(), &sid, ranges[0].0.as_slice()],
                enc,
            );
        } else {
            dt.insert(&[b"subnet".as_slice(), &sid, b"canister_ranges"], enc);
        }
        dt.insert(&[b"time".as_slice()], vec![1]);
        let dcert = certificate::certify(HashedTree::new(dt).to_hash_tree(), sign_root, None);
        let delegation = certificate::Delegation {
            subnet_id,
            certificate: dcert,
        };
        let cert = certificate::certify(state.to_hash_tree(), sign_subnet, Some(delegation));
        assert!(certificate::verify(&cert, &root_pk, Effective::Canister(canister)).is_ok());
        assert!(certificate::verify(&cert, &root_pk, Effective::Subnet(subnet_id)).is_ok());
        let outside = Principal::from_canister_index(0x1_0000);
        let err = certificate::verify(&cert, &root_pk, Effective::Canister(outside)).err();
        assert_eq!(err, Some(CertError::NotAuthorizedOutsideRanges));
        let other = Effective::Subnet(Principal::from_canister_index(1));
        let err = certificate::verify(&cert, &root_pk, other).err();
        assert_eq!(err, Some(CertError::DelegationForAnotherSubnet));
    }

    // Garbage never panics.
    for cut in 0..cert.len() {
        assert!(
            certificate::verify(&cert[..cut], &root_pk, Effective::Canister(canister)).is_err()
        );
    }
    let _ = Value::Null;
}
