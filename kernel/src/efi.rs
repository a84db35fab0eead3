//! The kernel as a UEFI application: the boot path of SEV-SNP measured direct boot, where
//! OVMF loads `-kernel` only as a PE32+ image (DESIGN.md "Boot paths", 3).
//!
//! `cargo xtask build` wraps the linked ELF into `kernel.efi` (xtask/src/pe.rs): a PE32+
//! image with a fixed image base, relocations stripped, whose sections sit at the ELF's link
//! addresses, so the firmware loads the kernel exactly where the PVH and multiboot2 paths
//! have it and the same code runs unrelocated. Its entry point is `cairn_efi_entry`
//! (boot/src/entry.rs), which jumps here with the Microsoft x64 convention.
//!
//! [`cairn_efi_main`], still under boot services (UEFI 2.10 §4, §7):
//! 1. masks interrupts: the kernel is compiled with the red zone, and an interrupt taken on
//!    the firmware's stack in one of our leaf functions would corrupt it (firmware calls may
//!    unmask them again, so every call is followed by `cli`);
//! 2. reads the command line from the Loaded Image protocol's `LoadOptions` (UCS-2; OVMF's
//!    QEMU loader puts `-append` there, prefixed with `initrd=initrd ` when there is one);
//! 3. finds the ACPI RSDP in the configuration table (ACPI 2.0 GUID first, else 1.0), and
//!    loads the initrd if the loader offers one through LoadFile2 under Linux's initrd media
//!    device path (OVMF does for `-initrd`; but QEMU 7.2 refuses `-initrd` with a kernel that
//!    has no Linux boot header, "linux kernel too old to load a ram disk", so under QEMU this
//!    path is not exercised); and the node configuration from QEMU's fw_cfg file
//!    `opt/cairn/node.cfg` as a module (`write_fw_cfg_config`);
//! 4. writes these, in the multiboot2 information format the kernel already parses (tags
//!    1, 3, 14/15 and 17), into a buffer in `.bss`, which the heap never takes;
//! 5. gets the memory map into that buffer and calls ExitBootServices with its key,
//!    fetching the map again when the key went stale (§7.4: a failed ExitBootServices
//!    allows only GetMemoryMap before the retry);
//! 6. calls `cairn_efi_enter_long`, which installs the kernel's own page tables, GDT and
//!    stack and enters `cairn_boot64(info, 3)`, the common 64-bit path.
//!
//! No firmware service is used after ExitBootServices; runtime services are not used at all.

use core::ffi::c_void;
use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering};

/// EFI_STATUS for success.
const EFI_SUCCESS: usize = 0;
/// High bit of an EFI_STATUS: an error.
const EFI_ERROR_BIT: usize = 1 << 63;
/// EFI_LOAD_ERROR, returned to the firmware when the kernel cannot start.
const EFI_LOAD_ERROR: usize = EFI_ERROR_BIT | 1;
/// EFI_INVALID_PARAMETER: ExitBootServices' answer to a stale map key.
const EFI_INVALID_PARAMETER: usize = EFI_ERROR_BIT | 2;
/// EFI_BUFFER_TOO_SMALL: GetMemoryMap's answer when the map does not fit.
const EFI_BUFFER_TOO_SMALL: usize = EFI_ERROR_BIT | 5;

/// Size of the handoff buffer (multiboot2-form information) in `.bss`.
const HANDOFF_BYTES: usize = 64 * 1024;
/// The largest initrd taken (the node configuration is a few KiB).
const MAX_INITRD_BYTES: usize = 256 * 1024 * 1024;
/// EFI_ALLOCATE_TYPE AllocateMaxAddress, and the limit: multiboot2 modules are 32-bit.
const ALLOCATE_MAX_ADDRESS: u32 = 1;
const MAX_MODULE_ADDRESS: u64 = 0xFFFF_FFFF;
/// EFI_MEMORY_TYPE EfiLoaderData.
const EFI_LOADER_DATA: u32 = 2;
const EFI_PAGE_BYTES: usize = 4096;
/// How many times a stale map key is refreshed before giving up.
const MAX_EXIT_BOOT_SERVICES_TRIES: usize = 8;
/// The longest command line taken from `LoadOptions`, in UCS-2 code units.
const MAX_CMDLINE_CHARS: usize = boot::MAX_CMDLINE_BYTES - 1;

const TAG_END: u32 = 0;
const TAG_CMDLINE: u32 = 1;
const TAG_MODULE: u32 = 3;
const TAG_ACPI_OLD: u32 = 14;
const TAG_ACPI_NEW: u32 = 15;
const TAG_EFI_MMAP: u32 = 17;

/// An EFI_GUID in its in-memory layout (u32, u16, u16 little-endian, then 8 bytes).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
struct Guid(u32, u16, u16, [u8; 8]);

const LOADED_IMAGE_GUID: Guid = Guid(
    0x5B1B_31A1,
    0x9562,
    0x11d2,
    [0x8E, 0x3F, 0x00, 0xA0, 0xC9, 0x69, 0x72, 0x3B],
);
const ACPI_20_TABLE_GUID: Guid = Guid(
    0x8868_e871,
    0xe4f1,
    0x11d3,
    [0xbc, 0x22, 0x00, 0x80, 0xc7, 0x3c, 0x88, 0x81],
);
/// Linux's `EFI_CC_BLOB_GUID`: OVMF's `cc_blob_sev_info` (secrets and CPUID pages) under SNP.
const CC_BLOB_GUID: Guid = Guid(
    0x067b_1f5f,
    0xcf26,
    0x44c5,
    [0x85, 0x54, 0x93, 0xd7, 0x77, 0x91, 0x2d, 0x42],
);
/// Linux's `LINUX_EFI_INITRD_MEDIA_GUID`: the vendor media device path under which a loader
/// (OVMF's QEMU kernel loader for `-initrd`) offers the initrd through LoadFile2.
const LINUX_INITRD_MEDIA_GUID: Guid = Guid(
    0x5568_e427,
    0x68fc,
    0x4f3d,
    [0xac, 0x74, 0xca, 0x55, 0x52, 0x31, 0xcc, 0x68],
);
const LOAD_FILE2_GUID: Guid = Guid(
    0x4006_c0c1,
    0xfcb3,
    0x403e,
    [0x99, 0x6d, 0x4a, 0x6c, 0x87, 0x24, 0xe0, 0x6d],
);
const ACPI_10_TABLE_GUID: Guid = Guid(
    0xeb9d_2d30,
    0x2d88,
    0x11d3,
    [0x9a, 0x16, 0x00, 0x90, 0x27, 0x3f, 0xc1, 0x4d],
);

/// EFI_TABLE_HEADER (UEFI 2.10 §4.2).
#[repr(C)]
struct TableHeader {
    signature: u64,
    revision: u32,
    header_size: u32,
    crc32: u32,
    reserved: u32,
}

/// EFI_SYSTEM_TABLE (§4.3), the fields used.
#[repr(C)]
struct SystemTable {
    hdr: TableHeader,
    firmware_vendor: *const u16,
    firmware_revision: u32,
    console_in_handle: *mut c_void,
    con_in: *mut c_void,
    console_out_handle: *mut c_void,
    con_out: *mut TextOutput,
    standard_error_handle: *mut c_void,
    std_err: *mut c_void,
    runtime_services: *mut c_void,
    boot_services: *const BootServices,
    number_of_table_entries: usize,
    configuration_table: *const ConfigurationTable,
}

/// EFI_CONFIGURATION_TABLE (§4.6).
#[repr(C)]
struct ConfigurationTable {
    vendor_guid: Guid,
    vendor_table: *const c_void,
}

/// EFI_SIMPLE_TEXT_OUTPUT_PROTOCOL (§12.4), the fields used.
#[repr(C)]
struct TextOutput {
    reset: usize,
    output_string: extern "efiapi" fn(*mut TextOutput, *const u16) -> usize,
}

type AllocatePagesFn = extern "efiapi" fn(
    allocate_type: u32,
    memory_type: u32,
    pages: usize,
    memory: *mut u64,
) -> usize;
type GetMemoryMapFn = extern "efiapi" fn(
    map_size: *mut usize,
    map: *mut u8,
    map_key: *mut usize,
    descriptor_size: *mut usize,
    descriptor_version: *mut u32,
) -> usize;
type HandleProtocolFn =
    extern "efiapi" fn(handle: *mut c_void, guid: *const Guid, out: *mut *mut c_void) -> usize;
type LocateDevicePathFn = extern "efiapi" fn(
    protocol: *const Guid,
    device_path: *mut *const u8,
    device: *mut *mut c_void,
) -> usize;
type ExitBootServicesFn = extern "efiapi" fn(image: *mut c_void, map_key: usize) -> usize;

/// EFI_BOOT_SERVICES (§4.4): the table header, then function pointers in spec order. Only
/// the ones used are typed; the others are placeholders that keep the offsets
/// (AllocatePages 0x28, GetMemoryMap 0x38, HandleProtocol 0x98, LocateDevicePath 0xB8,
/// ExitBootServices 0xE8).
#[repr(C)]
struct BootServices {
    hdr: TableHeader,
    raise_tpl_restore_tpl: [usize; 2],
    allocate_pages: AllocatePagesFn,
    free_pages: usize,
    get_memory_map: GetMemoryMapFn,
    allocate_pool_to_uninstall_protocol_interface: [usize; 11],
    handle_protocol: HandleProtocolFn,
    reserved_to_locate_handle: [usize; 3],
    locate_device_path: LocateDevicePathFn,
    install_configuration_table_to_unload_image: [usize; 5],
    exit_boot_services: ExitBootServicesFn,
}

/// EFI_LOAD_FILE2_PROTOCOL (§13.2).
#[repr(C)]
struct LoadFile2 {
    load_file: extern "efiapi" fn(
        this: *mut LoadFile2,
        file_path: *const u8,
        boot_policy: u8,
        buffer_size: *mut usize,
        buffer: *mut c_void,
    ) -> usize,
}

const _: () = assert!(core::mem::offset_of!(BootServices, allocate_pages) == 0x28);
const _: () = assert!(core::mem::offset_of!(BootServices, locate_device_path) == 0xB8);
const _: () = assert!(core::mem::offset_of!(BootServices, get_memory_map) == 0x38);
const _: () = assert!(core::mem::offset_of!(BootServices, handle_protocol) == 0x98);
const _: () = assert!(core::mem::offset_of!(BootServices, exit_boot_services) == 0xE8);
const _: () = assert!(core::mem::offset_of!(SystemTable, boot_services) == 0x60);
const _: () = assert!(core::mem::offset_of!(SystemTable, configuration_table) == 0x70);

/// EFI_LOADED_IMAGE_PROTOCOL (§9.1), up to the load options.
#[repr(C)]
struct LoadedImage {
    revision: u32,
    parent_handle: *mut c_void,
    system_table: *const SystemTable,
    device_handle: *mut c_void,
    file_path: *const c_void,
    reserved: *const c_void,
    load_options_size: u32,
    load_options: *const u16,
}

const _: () = assert!(core::mem::offset_of!(LoadedImage, load_options) == 0x38);

/// Physical address of OVMF's confidential-computing blob, 0 when there is none (not booted
/// through the UEFI entry, or not an SEV-SNP guest).
static CC_BLOB_PADDR: AtomicU64 = AtomicU64::new(0);

/// OVMF's `cc_blob_sev_info` (where the SNP secrets and CPUID pages are), if the firmware
/// published one; `kernel/src/tee/snp.rs` reads it.
pub fn cc_blob_paddr() -> Option<u64> {
    match CC_BLOB_PADDR.load(Ordering::Relaxed) {
        0 => None,
        paddr => Some(paddr),
    }
}

/// The multiboot2-form information handed to the kernel; 8-aligned as the format wants.
#[repr(C, align(8))]
struct Handoff([u8; HANDOFF_BYTES]);

/// Written only by `cairn_efi_main` before the kernel starts, then read by `boot::parse`.
static mut HANDOFF: Handoff = Handoff([0; HANDOFF_BYTES]);

unsafe extern "C" {
    /// boot/src/entry.rs: the kernel's page tables (every entry ORed with `c_bit_mask`), GDT
    /// and stack, then `cairn_boot64`.
    fn cairn_efi_enter_long(info_paddr: u64, c_bit_mask: u64) -> !;
}

fn cli() {
    crate::arch::cpu::disable_interrupts();
}

/// Writes an ASCII message to the firmware console (before ExitBootServices only).
fn say(st: &SystemTable, text: &str) {
    const CHUNK_CHARS: usize = 128;
    if st.con_out.is_null() {
        return;
    }
    let mut buf = [0u16; CHUNK_CHARS + 1];
    for chunk in text.as_bytes().chunks(CHUNK_CHARS) {
        for (slot, &b) in buf.iter_mut().zip(chunk) {
            *slot = u16::from(b);
        }
        buf[chunk.len()] = 0;
        // SAFETY: con_out is the firmware's text output protocol, valid under boot
        // services; the string is NUL-terminated UCS-2 on our stack.
        let output = unsafe { (*st.con_out).output_string };
        output(st.con_out, buf.as_ptr());
        cli();
    }
}

/// Formats into a fixed buffer (no heap before the kernel runs); cuts what does not fit.
struct ByteWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Appends multiboot2 tags to the handoff buffer.
struct TagWriter<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl TagWriter<'_> {
    /// Starts a tag of `kind` with a body of `len` bytes; returns the body, or None if full.
    fn tag(&mut self, kind: u32, len: usize) -> Option<&mut [u8]> {
        let start = self.at;
        let end = start.checked_add(8 + len)?;
        let padded = (end + 7) & !7;
        if padded > self.buf.len() {
            return None;
        }
        self.buf[start..start + 4].copy_from_slice(&kind.to_le_bytes());
        self.buf[start + 4..start + 8].copy_from_slice(&((8 + len) as u32).to_le_bytes());
        self.at = padded;
        Some(&mut self.buf[start + 8..end])
    }

    fn finish(&mut self) -> Option<()> {
        self.tag(TAG_END, 0)?;
        let total = self.at as u32;
        self.buf[..4].copy_from_slice(&total.to_le_bytes());
        Some(())
    }
}

/// The command line from the image's load options: UCS-2 to ASCII (other characters as
/// `?`), up to the first NUL.
fn write_cmdline(st: &SystemTable, image: *mut c_void, out: &mut TagWriter<'_>) -> Option<()> {
    // SAFETY: boot_services is valid under boot services (UEFI 2.10 §4.3).
    let bs = unsafe { &*st.boot_services };
    let mut loaded: *mut c_void = core::ptr::null_mut();
    let status = (bs.handle_protocol)(image, &LOADED_IMAGE_GUID, &mut loaded);
    cli();
    let mut chars: &[u16] = &[];
    if status == EFI_SUCCESS && !loaded.is_null() {
        // SAFETY: HandleProtocol returned the image's EFI_LOADED_IMAGE_PROTOCOL.
        let loaded = unsafe { &*(loaded as *const LoadedImage) };
        if !loaded.load_options.is_null() {
            let units = (loaded.load_options_size / 2) as usize;
            // SAFETY: the firmware owns LoadOptions (LoadOptionsSize bytes) while the image
            // runs under boot services; it is read before ExitBootServices.
            chars = unsafe { core::slice::from_raw_parts(loaded.load_options, units) };
        }
    }
    let len = chars
        .iter()
        .position(|&c| c == 0)
        .unwrap_or(chars.len())
        .min(MAX_CMDLINE_CHARS);
    let body = out.tag(TAG_CMDLINE, len + 1)?;
    for (dst, &c) in body.iter_mut().zip(&chars[..len]) {
        *dst = if (0x20..0x7f).contains(&c) {
            c as u8
        } else {
            b'?'
        };
    }
    body[len] = 0;
    Some(())
}

/// The ACPI RSDP from the configuration table, copied into a tag (15 for ACPI 2.0+, 14 for
/// a 1.0 RSDP). No tag when the firmware has no ACPI table. Also records the SEV-SNP
/// confidential-computing blob, when the firmware published one.
fn write_rsdp(st: &SystemTable, out: &mut TagWriter<'_>) -> Option<()> {
    const RSDP_V2_BYTES: usize = 36;
    const RSDP_V1_BYTES: usize = 20;
    let entries = if st.configuration_table.is_null() {
        &[][..]
    } else {
        // SAFETY: the system table lists number_of_table_entries entries there.
        unsafe { core::slice::from_raw_parts(st.configuration_table, st.number_of_table_entries) }
    };
    let find = |guid: Guid| {
        entries
            .iter()
            .find(|e| e.vendor_guid == guid && !e.vendor_table.is_null())
    };
    if let Some(blob) = find(CC_BLOB_GUID) {
        CC_BLOB_PADDR.store(blob.vendor_table as u64, Ordering::Relaxed);
    }
    let (kind, len, table) = match (find(ACPI_20_TABLE_GUID), find(ACPI_10_TABLE_GUID)) {
        (Some(t), _) => (TAG_ACPI_NEW, RSDP_V2_BYTES, t.vendor_table),
        (None, Some(t)) => (TAG_ACPI_OLD, RSDP_V1_BYTES, t.vendor_table),
        (None, None) => return Some(()),
    };
    // SAFETY: the firmware's RSDP, at least `len` bytes for its revision, in ACPI memory.
    let rsdp = unsafe { core::slice::from_raw_parts(table as *const u8, len) };
    out.tag(kind, len)?.copy_from_slice(rsdp);
    Some(())
}

/// The initrd, if the loader offers one through LoadFile2 under Linux's initrd media device
/// path: loaded into pages below 4 GiB (loader data, which the kernel's heap excludes as a
/// boot module) and described by a module tag (3) named `initrd`.
fn write_initrd(st: &SystemTable, out: &mut TagWriter<'_>) -> Option<()> {
    // Vendor media node (type 4, subtype 3, 20 bytes: header + GUID), then the end node.
    let mut path = [0u8; 24];
    path[..4].copy_from_slice(&[4, 3, 20, 0]);
    let g = LINUX_INITRD_MEDIA_GUID;
    path[4..8].copy_from_slice(&g.0.to_le_bytes());
    path[8..10].copy_from_slice(&g.1.to_le_bytes());
    path[10..12].copy_from_slice(&g.2.to_le_bytes());
    path[12..20].copy_from_slice(&g.3);
    path[20..24].copy_from_slice(&[0x7F, 0xFF, 4, 0]);
    // SAFETY: boot_services is valid under boot services.
    let bs = unsafe { &*st.boot_services };
    let mut remaining: *const u8 = path.as_ptr();
    let mut handle: *mut c_void = core::ptr::null_mut();
    let status = (bs.locate_device_path)(&LOAD_FILE2_GUID, &mut remaining, &mut handle);
    cli();
    if status != EFI_SUCCESS || handle.is_null() {
        return Some(()); // no initrd: not an error
    }
    let mut proto: *mut c_void = core::ptr::null_mut();
    let status = (bs.handle_protocol)(handle, &LOAD_FILE2_GUID, &mut proto);
    cli();
    if status != EFI_SUCCESS || proto.is_null() {
        return Some(());
    }
    let proto = proto as *mut LoadFile2;
    // SAFETY: HandleProtocol returned the handle's EFI_LOAD_FILE2_PROTOCOL.
    let load_file = unsafe { (*proto).load_file };
    let mut size = 0usize;
    let status = load_file(proto, path.as_ptr(), 0, &mut size, core::ptr::null_mut());
    cli();
    if status != EFI_BUFFER_TOO_SMALL || size == 0 || size > MAX_INITRD_BYTES {
        say(st, "cairn: initrd offered but not loadable; ignored\r\n");
        return Some(());
    }
    let mut addr = MAX_MODULE_ADDRESS;
    let pages = size.div_ceil(EFI_PAGE_BYTES);
    let status = (bs.allocate_pages)(ALLOCATE_MAX_ADDRESS, EFI_LOADER_DATA, pages, &mut addr);
    cli();
    if status != EFI_SUCCESS {
        say(
            st,
            "cairn: no memory below 4 GiB for the initrd; ignored\r\n",
        );
        return Some(());
    }
    let status = load_file(proto, path.as_ptr(), 0, &mut size, addr as *mut c_void);
    cli();
    if status != EFI_SUCCESS {
        say(st, "cairn: initrd load failed; ignored\r\n");
        return Some(());
    }
    const NAME: &[u8] = b"initrd\0";
    let body = out.tag(TAG_MODULE, 8 + NAME.len())?;
    // addr + size <= 4 GiB: AllocateMaxAddress kept the pages below MAX_MODULE_ADDRESS.
    body[..4].copy_from_slice(&(addr as u32).to_le_bytes());
    body[4..8].copy_from_slice(&((addr + size as u64) as u32).to_le_bytes());
    body[8..].copy_from_slice(NAME);
    Some(())
}

/// The node configuration from QEMU's fw_cfg file `opt/cairn/node.cfg`
/// (`crate::runtime::config::FW_CFG_CONFIG_NAME`; QEMU 7.2 refuses `-initrd` for this PE
/// image): found in the fw_cfg directory, copied byte by byte from the data port into loader
/// pages below 4 GiB and described by a module tag (3) like the initrd's, which the runtime's
/// `find_config` takes. Done under boot services on purpose: under SEV-SNP, port I/O traps
/// (#VC) and OVMF's handler still serves it here. Without the file (or without fw_cfg) the
/// console says why (`cairn: no config: …`) and the kernel boots without a node. `None` only
/// when the handoff buffer is full.
fn write_fw_cfg_config(st: &SystemTable, out: &mut TagWriter<'_>) -> Option<()> {
    use crate::runtime::config::{self as cfg, FwCfgError};
    let fw_cfg = crate::arch::fw_cfg::FwCfg::new();
    let select = |key: u16| fw_cfg.select(key);
    let mut read = |buf: &mut [u8]| fw_cfg.read(buf);
    // SAFETY: boot_services is valid under boot services.
    let bs = unsafe { &*st.boot_services };
    let mut load = || -> Result<(u64, usize), FwCfgError> {
        select(cfg::FW_CFG_SIGNATURE_SELECTOR);
        let mut signature = [0u8; 4];
        read(&mut signature);
        if &signature != cfg::FW_CFG_SIGNATURE {
            return Err(FwCfgError::NoDevice);
        }
        select(cfg::FW_CFG_FILE_DIR_SELECTOR);
        let file = cfg::fw_cfg_find(&mut read, cfg::FW_CFG_CONFIG_NAME)?;
        let size = file.size as usize;
        let mut addr = MAX_MODULE_ADDRESS;
        let pages = size.div_ceil(EFI_PAGE_BYTES);
        let status = (bs.allocate_pages)(ALLOCATE_MAX_ADDRESS, EFI_LOADER_DATA, pages, &mut addr);
        cli();
        if status != EFI_SUCCESS {
            return Err(FwCfgError::NoMemory);
        }
        // SAFETY: AllocatePages gave us `pages` pages at `addr` (identity-mapped under boot
        // services), at least `size` bytes, which nothing else uses.
        let dest = unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, size) };
        select(file.select);
        read(dest);
        Ok((addr, size))
    };
    let result = load().and_then(|(addr, size)| {
        // The module's name is the fw_cfg file's, NUL-terminated.
        let name = cfg::FW_CFG_CONFIG_NAME.as_bytes();
        let body = out
            .tag(TAG_MODULE, 8 + name.len() + 1)
            .ok_or(FwCfgError::NoRoom)?;
        // addr + size <= 4 GiB: AllocateMaxAddress kept the pages below MAX_MODULE_ADDRESS.
        body[..4].copy_from_slice(&(addr as u32).to_le_bytes());
        body[4..8].copy_from_slice(&((addr + size as u64) as u32).to_le_bytes());
        body[8..8 + name.len()].copy_from_slice(name);
        body[8 + name.len()] = 0;
        Ok(size)
    });
    let mut text = [0u8; 160];
    let mut w = ByteWriter {
        buf: &mut text,
        len: 0,
    };
    let _ = match result {
        Ok(size) => write!(w, "cairn: node config from fw_cfg ({size} bytes)\r\n"),
        Err(e) => write!(w, "cairn: no config: {e}\r\n"),
    };
    let len = w.len;
    say(
        st,
        core::str::from_utf8(&text[..len]).unwrap_or("cairn: no config\r\n"),
    );
    match result {
        Err(FwCfgError::NoRoom) => None,
        _ => Some(()),
    }
}

/// Gets the memory map into a tag-17 body at the writer's position and exits boot services.
/// Returns the finished writer length, or the failing status.
fn exit_boot_services(
    st: &SystemTable,
    image: *mut c_void,
    out: &mut TagWriter<'_>,
) -> Result<(), usize> {
    // SAFETY: boot_services is valid until ExitBootServices succeeds.
    let bs = unsafe { &*st.boot_services };
    let tag_at = out.at;
    // Tag header (8) + descriptor size and version (8), then the descriptors; keep room
    // for the end tag.
    let map_at = tag_at + 16;
    let room = out.buf.len().saturating_sub(map_at + 16);
    for _ in 0..MAX_EXIT_BOOT_SERVICES_TRIES {
        let mut size = room;
        let mut key = 0usize;
        let mut desc_size = 0usize;
        let mut desc_version = 0u32;
        let status = (bs.get_memory_map)(
            &mut size,
            out.buf[map_at..].as_mut_ptr(),
            &mut key,
            &mut desc_size,
            &mut desc_version,
        );
        cli();
        if status != EFI_SUCCESS {
            return Err(status);
        }
        let status = (bs.exit_boot_services)(image, key);
        cli();
        match status {
            EFI_SUCCESS => {
                out.at = tag_at;
                let body = out
                    .tag(TAG_EFI_MMAP, 8 + size)
                    .ok_or(EFI_BUFFER_TOO_SMALL)?;
                body[..4].copy_from_slice(&(desc_size as u32).to_le_bytes());
                body[4..8].copy_from_slice(&desc_version.to_le_bytes());
                out.finish().ok_or(EFI_BUFFER_TOO_SMALL)?;
                return Ok(());
            }
            EFI_INVALID_PARAMETER => continue,
            other => return Err(other),
        }
    }
    Err(EFI_INVALID_PARAMETER)
}

/// The UEFI entry (through `cairn_efi_entry`): see the module documentation.
#[unsafe(no_mangle)]
extern "efiapi" fn cairn_efi_main(image: *mut c_void, st: *const SystemTable) -> usize {
    cli();
    if st.is_null() {
        return EFI_LOAD_ERROR;
    }
    // SAFETY: the firmware passes its system table, valid under boot services.
    let st = unsafe { &*st };
    say(st, "cairn: UEFI entry, exiting boot services\r\n");
    // SAFETY: nothing else runs yet (one CPU, interrupts masked); the buffer is only read
    // again by the kernel after this function hands over.
    let handoff = &raw mut HANDOFF;
    // SAFETY: as above.
    let buf = unsafe { &mut (*handoff).0 };
    let mut out = TagWriter {
        buf: &mut buf[..],
        at: 8,
    };
    if write_cmdline(st, image, &mut out).is_none()
        || write_rsdp(st, &mut out).is_none()
        || write_initrd(st, &mut out).is_none()
        || write_fw_cfg_config(st, &mut out).is_none()
    {
        say(st, "cairn: boot information does not fit\r\n");
        return EFI_LOAD_ERROR;
    }
    // Under SEV-SNP the kernel's own page tables must mark its memory private (C-bit); the
    // firmware's #VC handler still serves the CPUID this needs (arch/x86_64/sev.rs).
    let c_bit_mask = crate::arch::sev::detect_c_bit_mask();
    if let Err(status) = exit_boot_services(st, image, &mut out) {
        // Boot services are gone only on success, so saying why is still allowed here.
        let mut text = [0u8; 64];
        let mut w = ByteWriter {
            buf: &mut text,
            len: 0,
        };
        let _ = write!(w, "cairn: ExitBootServices failed: {status:#x}\r\n");
        let len = w.len;
        say(
            st,
            core::str::from_utf8(&text[..len]).unwrap_or("cairn: ExitBootServices failed\r\n"),
        );
        return EFI_LOAD_ERROR;
    }
    let info_paddr = (&raw const HANDOFF) as u64;
    // SAFETY: boot services are gone; the entry code takes over the machine with the
    // kernel's own tables and never returns.
    unsafe { cairn_efi_enter_long(info_paddr, c_bit_mask) }
}
