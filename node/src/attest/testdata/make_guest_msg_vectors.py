#!/usr/bin/env python3
"""Builds the SNP guest-message test vectors in this directory with an independent AEAD
implementation (pyca/cryptography's AESGCM, i.e. OpenSSL), following the message layout of
the SEV-SNP ABI spec #56860 chapter 7 ("Guest Messages"):

  0x00 auth_tag[32] (AES-GCM tag in the first 16 bytes) | 0x20 msg_seqno u64 | 0x28 rsvd[8]
  0x30 algo u8 | 0x31 hdr_version u8 | 0x32 hdr_size u16 | 0x34 msg_type u8 | 0x35 msg_version u8
  0x36 msg_size u16 | 0x38 rsvd u32 | 0x3C msg_vmpck u8 | 0x3D rsvd[35] | 0x60 payload

IV = msg_seqno (8 bytes little-endian) || 4 zero bytes; AAD = bytes 0x30..0x60.
Run from this directory: python3 make_guest_msg_vectors.py
"""
import struct
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VMPCK = bytes(range(32))


def page(seqno, msg_type, msg_version, vmpck_id, plaintext, key=VMPCK):
    hdr_auth = struct.pack("<BBHBBHIB", 1, 1, 0x60, msg_type, msg_version, len(plaintext), 0, vmpck_id)
    hdr_auth += bytes(0x30 - len(hdr_auth))
    iv = struct.pack("<Q", seqno) + bytes(4)
    sealed = AESGCM(key).encrypt(iv, plaintext, hdr_auth)
    ct, tag = sealed[:-16], sealed[-16:]
    hdr = tag + bytes(16) + struct.pack("<Q", seqno) + bytes(8) + hdr_auth
    assert len(hdr) == 0x60
    out = hdr + ct
    return out + bytes(4096 - len(out))


# MSG_REPORT_REQ: report_data[64] = 0x40..0x7f, vmpl 0, reserved to 96 bytes. Sequence 1, VMPCK0.
report_req = bytes(range(0x40, 0x80)) + struct.pack("<I", 0) + bytes(28)
open("guest_msg_report_req.bin", "wb").write(page(1, 5, 1, 0, report_req))

# MSG_REPORT_RSP: status 0, report_size 1184, 24 reserved, then a genuine report. Sequence 2.
report = open("../../../../../shared/testdata/sev-snp/milan-v2-virtee/report.bin", "rb").read()
assert len(report) == 1184
report_rsp = struct.pack("<II", 0, len(report)) + bytes(24) + report
open("guest_msg_report_rsp.bin", "wb").write(page(2, 6, 1, 0, report_rsp))

# An error response: status 0x16 (INVALID_PARAM), report_size 0. Sequence 2.
err_rsp = struct.pack("<II", 0x16, 0) + bytes(24) + bytes(1184)
open("guest_msg_report_rsp_invalid_param.bin", "wb").write(page(2, 6, 1, 0, err_rsp))
