//! The slice of the CUDA driver and NVML ABIs that libvgpu and its fake driver use, written by
//! hand from the public API documentation (no NVIDIA header text). Result codes are newtypes
//! over `u32`, never Rust enums: a newer driver may return a code we do not know, and an enum
//! holding an undeclared value would be undefined behaviour.
#![no_std]
#![allow(non_camel_case_types, non_snake_case)]

use core::ffi::c_void;
use core::mem::{offset_of, size_of};

/// `CUresult`: the driver's return code.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct CUresult(pub u32);

impl CUresult {
    pub const SUCCESS: Self = Self(0);
    pub const ERROR_INVALID_VALUE: Self = Self(1);
    pub const ERROR_OUT_OF_MEMORY: Self = Self(2);
    pub const ERROR_NOT_INITIALIZED: Self = Self(3);
    pub const ERROR_DEINITIALIZED: Self = Self(4);
    pub const ERROR_NO_DEVICE: Self = Self(100);
    pub const ERROR_INVALID_DEVICE: Self = Self(101);
    pub const ERROR_INVALID_CONTEXT: Self = Self(201);
    pub const ERROR_INVALID_HANDLE: Self = Self(400);
    pub const ERROR_NOT_FOUND: Self = Self(500);
    pub const ERROR_NOT_READY: Self = Self(600);
    pub const ERROR_NOT_SUPPORTED: Self = Self(801);
    pub const ERROR_UNKNOWN: Self = Self(999);

    pub fn is_success(self) -> bool {
        self == Self::SUCCESS
    }
}

/// `nvmlReturn_t`.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct nvmlReturn_t(pub u32);

impl nvmlReturn_t {
    pub const SUCCESS: Self = Self(0);
    pub const ERROR_UNINITIALIZED: Self = Self(1);
    pub const ERROR_INVALID_ARGUMENT: Self = Self(2);
    pub const ERROR_NOT_SUPPORTED: Self = Self(3);
    pub const ERROR_INSUFFICIENT_SIZE: Self = Self(7);
    pub const ERROR_FUNCTION_NOT_FOUND: Self = Self(13);
    pub const ERROR_ARGUMENT_VERSION_MISMATCH: Self = Self(25);
    pub const ERROR_NOT_FOUND: Self = Self(6);
    pub const ERROR_UNKNOWN: Self = Self(999);

    pub fn is_success(self) -> bool {
        self == Self::SUCCESS
    }
}

pub type CUdevice = i32;
pub type CUdeviceptr = u64;
pub type CUcontext = *mut c_void;
pub type CUstream = *mut c_void;
pub type CUmemoryPool = *mut c_void;
pub type CUarray = *mut c_void;
pub type CUmipmappedArray = *mut c_void;
pub type CUmemGenericAllocationHandle = u64;
pub type nvmlDevice_t = *mut c_void;

/// `CUdriverProcAddressQueryResult`, written by `cuGetProcAddress_v2` into `symbolStatus`.
pub type CUdriverProcAddressQueryResult = u32;
pub const CU_GET_PROC_ADDRESS_SUCCESS: u32 = 0;
pub const CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND: u32 = 1;
pub const CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT: u32 = 2;

/// `cuGetProcAddress` flags.
pub const CU_GET_PROC_ADDRESS_DEFAULT: u64 = 0;
pub const CU_GET_PROC_ADDRESS_LEGACY_STREAM: u64 = 1;
pub const CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM: u64 = 2;

/// `CUarray_format` values and the size in bytes of one channel of each.
pub mod array_format {
    pub const UNSIGNED_INT8: u32 = 0x01;
    pub const UNSIGNED_INT16: u32 = 0x02;
    pub const UNSIGNED_INT32: u32 = 0x03;
    pub const SIGNED_INT8: u32 = 0x08;
    pub const SIGNED_INT16: u32 = 0x09;
    pub const SIGNED_INT32: u32 = 0x0a;
    pub const HALF: u32 = 0x10;
    pub const FLOAT: u32 = 0x20;

    /// Bytes per channel; formats we do not know (planar video, block-compressed, newer
    /// additions) are charged as 4 bytes per channel and trued up from the driver's answer
    /// to `cuArrayGetMemoryRequirements` where it has one.
    pub fn channel_bytes(format: u32) -> u64 {
        match format {
            UNSIGNED_INT8 | SIGNED_INT8 => 1,
            UNSIGNED_INT16 | SIGNED_INT16 | HALF => 2,
            UNSIGNED_INT32 | SIGNED_INT32 | FLOAT => 4,
            _ => 4,
        }
    }
}

/// `CUDA_ARRAY_DESCRIPTOR` (the `_v2` layout: `size_t` extents).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CUDA_ARRAY_DESCRIPTOR {
    pub Width: usize,
    pub Height: usize,
    pub Format: u32,
    pub NumChannels: u32,
}

/// `CUDA_ARRAY3D_DESCRIPTOR` (the `_v2` layout).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CUDA_ARRAY3D_DESCRIPTOR {
    pub Width: usize,
    pub Height: usize,
    pub Depth: usize,
    pub Format: u32,
    pub NumChannels: u32,
    pub Flags: u32,
}

/// `CUDA_ARRAY_MEMORY_REQUIREMENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CUDA_ARRAY_MEMORY_REQUIREMENTS {
    pub size: usize,
    pub alignment: usize,
    pub reserved: [u32; 4],
}

/// `CUmemLocationType`.
pub const CU_MEM_LOCATION_TYPE_INVALID: u32 = 0;
pub const CU_MEM_LOCATION_TYPE_DEVICE: u32 = 1;
pub const CU_MEM_LOCATION_TYPE_HOST: u32 = 2;
pub const CU_MEM_LOCATION_TYPE_HOST_NUMA: u32 = 3;
pub const CU_MEM_LOCATION_TYPE_HOST_NUMA_CURRENT: u32 = 4;

/// `CUmemAllocationType`.
pub const CU_MEM_ALLOCATION_TYPE_PINNED: u32 = 1;

/// `CUmemLocation`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CUmemLocation {
    pub type_: u32,
    pub id: i32,
}

/// `CUmemAllocationProp::allocFlags`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CUmemAllocFlags {
    pub compressionType: u8,
    pub gpuDirectRDMACapable: u8,
    pub usage: u16,
    pub reserved: [u8; 4],
}

/// `CUmemAllocationProp`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CUmemAllocationProp {
    pub type_: u32,
    pub requestedHandleTypes: u32,
    pub location: CUmemLocation,
    pub win32HandleMetaData: *mut c_void,
    pub allocFlags: CUmemAllocFlags,
}

/// `CUuuid`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CUuuid {
    pub bytes: [u8; 16],
}

/// `nvmlMemory_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct nvmlMemory_t {
    pub total: u64,
    pub free: u64,
    pub used: u64,
}

/// `nvmlMemory_v2_t`; `version` must be [`NVML_MEMORY_V2`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct nvmlMemory_v2_t {
    pub version: u32,
    pub total: u64,
    pub reserved: u64,
    pub free: u64,
    pub used: u64,
}

/// NVML's versioned-struct convention: `sizeof(struct) | (version << 24)`.
pub const NVML_MEMORY_V2: u32 = size_of::<nvmlMemory_v2_t>() as u32 | (2 << 24);

/// `nvmlProcessInfo_t` (the v2/v3 layout used by `nvmlDeviceGetComputeRunningProcesses_v3`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct nvmlProcessInfo_t {
    pub pid: u32,
    pub usedGpuMemory: u64,
    pub gpuInstanceId: u32,
    pub computeInstanceId: u32,
}

/// `nvmlProcessInfo_v1_t` (used by the unversioned `nvmlDeviceGetComputeRunningProcesses`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct nvmlProcessInfo_v1_t {
    pub pid: u32,
    pub usedGpuMemory: u64,
}

/// Buffer sizes NVML documents for string queries.
pub const NVML_DEVICE_UUID_V2_BUFFER_SIZE: u32 = 96;

// The layouts are ABI: pin them.
const _: () = {
    assert!(size_of::<CUresult>() == 4);
    assert!(size_of::<nvmlReturn_t>() == 4);
    assert!(size_of::<CUDA_ARRAY_DESCRIPTOR>() == 24);
    assert!(size_of::<CUDA_ARRAY3D_DESCRIPTOR>() == 40);
    assert!(size_of::<CUDA_ARRAY_MEMORY_REQUIREMENTS>() == 32);
    assert!(size_of::<CUmemAllocationProp>() == 32);
    assert!(offset_of!(CUmemAllocationProp, location) == 8);
    assert!(offset_of!(CUmemAllocationProp, win32HandleMetaData) == 16);
    assert!(offset_of!(CUmemAllocationProp, allocFlags) == 24);
    assert!(size_of::<nvmlMemory_t>() == 24);
    assert!(size_of::<nvmlMemory_v2_t>() == 40);
    assert!(offset_of!(nvmlMemory_v2_t, total) == 8);
    assert!(offset_of!(nvmlMemory_v2_t, used) == 32);
    assert!(NVML_MEMORY_V2 == 0x0200_0028);
    assert!(size_of::<nvmlProcessInfo_t>() == 24);
    assert!(size_of::<nvmlProcessInfo_v1_t>() == 16);
};

// ---- Launches, events, graphs, arrays and memory pools: what the fake driver needs to implement
// these calls. libvgpu's hooks read only a little of it (a launch's stream, a pool attribute). ----

pub type CUfunction = *mut c_void;
pub type CUevent = *mut c_void;
pub type CUgraphExec = *mut c_void;

/// `CUlaunchConfig` (for `cuLaunchKernelEx`); only `hStream` is read by libvgpu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CUlaunchConfig {
    pub gridDimX: u32,
    pub gridDimY: u32,
    pub gridDimZ: u32,
    pub blockDimX: u32,
    pub blockDimY: u32,
    pub blockDimZ: u32,
    pub sharedMemBytes: u32,
    pub hStream: CUstream,
    pub attrs: *mut c_void,
    pub numAttrs: u32,
}

const _: () = assert!(core::mem::offset_of!(CUlaunchConfig, hStream) == 32);

/// `CUDA_ARRAY_DESCRIPTOR` as the pre-3.2 (`cuArrayCreate` without suffix) entry point takes
/// it: 32-bit extents.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CUDA_ARRAY_DESCRIPTOR_v1 {
    pub Width: u32,
    pub Height: u32,
    pub Format: u32,
    pub NumChannels: u32,
}

/// `CUDA_ARRAY3D_DESCRIPTOR` for the pre-3.2 `cuArray3DCreate`: 32-bit extents.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CUDA_ARRAY3D_DESCRIPTOR_v1 {
    pub Width: u32,
    pub Height: u32,
    pub Depth: u32,
    pub Format: u32,
    pub NumChannels: u32,
    pub Flags: u32,
}

/// `CUmemPoolProps`: the location sits where it sits in [`CUmemAllocationProp`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CUmemPoolProps {
    pub allocType: u32,
    pub handleTypes: u32,
    pub location: CUmemLocation,
    pub win32SecurityAttributes: *mut c_void,
    pub maxSize: usize,
    pub usage: u16,
    pub reserved: [u8; 54],
}

/// `CUmemAccessDesc`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CUmemAccessDesc {
    pub location: CUmemLocation,
    pub flags: u32,
}

/// `CUmemPool_attribute`: the first three take an `int`, the rest a `cuuint64_t`.
pub mod mempool_attr {
    pub const REUSE_FOLLOW_EVENT_DEPENDENCIES: u32 = 1;
    pub const REUSE_ALLOW_OPPORTUNISTIC: u32 = 2;
    pub const REUSE_ALLOW_INTERNAL_DEPENDENCIES: u32 = 3;
    pub const RELEASE_THRESHOLD: u32 = 4;
    pub const RESERVED_MEM_CURRENT: u32 = 5;
    pub const RESERVED_MEM_HIGH: u32 = 6;
    pub const USED_MEM_CURRENT: u32 = 7;
    pub const USED_MEM_HIGH: u32 = 8;
}

/// Stream handles with a fixed meaning (`CU_STREAM_LEGACY`, `CU_STREAM_PER_THREAD`).
pub const CU_STREAM_LEGACY: usize = 0x1;
pub const CU_STREAM_PER_THREAD: usize = 0x2;

/// `cuMemGetAllocationGranularity` options.
pub const CU_MEM_ALLOC_GRANULARITY_MINIMUM: u32 = 0;
pub const CU_MEM_ALLOC_GRANULARITY_RECOMMENDED: u32 = 1;

const _: () = {
    assert!(size_of::<CUDA_ARRAY_DESCRIPTOR_v1>() == 16);
    assert!(size_of::<CUDA_ARRAY3D_DESCRIPTOR_v1>() == 24);
    assert!(size_of::<CUmemPoolProps>() == 88);
    assert!(offset_of!(CUmemPoolProps, location) == 8);
    assert!(size_of::<CUmemAccessDesc>() == 12);
};
