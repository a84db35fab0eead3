#!/usr/bin/env python3
"""Writes amdsev_like.fd: a 16 KiB stand-in for edk2's AmdSev OVMF build (Debian ships none),
with the same footer table and SEV metadata structure (edk2 OvmfPkg/ResetVector): SEV-ES reset
block, SEV hash table (inside the SNP_KERNEL_HASHES page, at offset 0x400) and an ASEV block
listing SNP_SEC_MEM, SECRETS, CPUID, SVSM_CAA, SNP_KERNEL_HASHES and SNP_SEC_MEM sections.
The expected digests in measure.rs's tests were printed by sev-snp-measure 0.0.13 (PyPI) for
this file; the commands are next to them."""
import struct
import uuid

SIZE = 16 * 1024
fw = bytearray((i * 37 + 11) & 0xFF for i in range(SIZE))

sections = [(0x800000, 0x9000, 1), (0x809000, 0x1000, 2), (0x80A000, 0x1000, 3),
            (0x80B000, 0x1000, 4), (0x80C000, 0x1000, 0x10), (0x80D000, 0x3000, 1)]
meta = b"ASEV" + struct.pack("<III", 16 + 12 * len(sections), 1, len(sections))
for s in sections:
    meta += struct.pack("<III", *s)
meta_from_end = 0x1000
fw[SIZE - meta_from_end:SIZE - meta_from_end + len(meta)] = meta


def entry(guid, data):
    return data + struct.pack("<H", len(data) + 18) + uuid.UUID(guid).bytes_le


table = entry("00f771de-1a7e-4fcb-890e-68c77e2fb44e", struct.pack("<I", 0x80B004))
table += entry("7255371f-3a3b-4b04-927b-1da6efa8d454", struct.pack("<II", 0x80C400, 0x400))
table += entry("dc886566-984a-4798-a75e-5585a7bf67cc", struct.pack("<I", meta_from_end))
footer_at = SIZE - 32 - 18
fw[footer_at - len(table):footer_at] = table
fw[footer_at:footer_at + 18] = struct.pack("<H", len(table) + 18) + uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d").bytes_le
open("amdsev_like.fd", "wb").write(bytes(fw))
