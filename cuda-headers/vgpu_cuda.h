/* Project-written declarations of the CUDA driver API subset used by tests/c.
 * Written from the public API documentation; see README.md. Every function is declared
 * under its exported symbol name (no renaming macros), so a test calls exactly the entry
 * point it names. */
#ifndef VGPU_CUDA_H
#define VGPU_CUDA_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef unsigned int CUresult;
#define CUDA_SUCCESS 0u
#define CUDA_ERROR_INVALID_VALUE 1u
#define CUDA_ERROR_OUT_OF_MEMORY 2u
#define CUDA_ERROR_NOT_INITIALIZED 3u
#define CUDA_ERROR_INVALID_DEVICE 101u
#define CUDA_ERROR_INVALID_CONTEXT 201u
#define CUDA_ERROR_NOT_FOUND 500u
#define CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED 704u
#define CUDA_ERROR_PEER_ACCESS_NOT_ENABLED 705u
#define CUDA_ERROR_NOT_SUPPORTED 801u

typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef unsigned long long CUmemGenericAllocationHandle;
typedef struct vgpu_opaque_context *CUcontext;
typedef struct vgpu_opaque_stream *CUstream;
typedef struct vgpu_opaque_pool *CUmemoryPool;
typedef struct vgpu_opaque_array *CUarray;
typedef struct vgpu_opaque_mipmap *CUmipmappedArray;

typedef struct { char bytes[16]; } CUuuid;

/* cuGetProcAddress flags and the symbol status cuGetProcAddress_v2 reports. */
#define CU_GET_PROC_ADDRESS_DEFAULT 0ull
#define CU_GET_PROC_ADDRESS_LEGACY_STREAM 1ull
#define CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM 2ull
typedef unsigned int CUdriverProcAddressQueryResult;
#define CU_GET_PROC_ADDRESS_SUCCESS 0u
#define CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND 1u
#define CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT 2u

/* Managed memory attach flag. */
#define CU_MEM_ATTACH_GLOBAL 1u

/* Virtual memory management. */
#define CU_MEM_ALLOCATION_TYPE_PINNED 1u
#define CU_MEM_LOCATION_TYPE_DEVICE 1u
#define CU_MEM_LOCATION_TYPE_HOST 2u
#define CU_MEM_LOCATION_TYPE_HOST_NUMA 3u
/* Shareable handle types (CUmemAllocationHandleType, a bit set in requestedHandleTypes). */
#define CU_MEM_HANDLE_TYPE_NONE 0u
#define CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR 1u
/* Access rights for cuMemSetAccess (CUmemAccess_flags). */
#define CU_MEM_ACCESS_FLAGS_PROT_READWRITE 3u
typedef struct {
    unsigned int type;
    int id;
} CUmemLocation;
typedef struct {
    unsigned int type;
    unsigned int requestedHandleTypes;
    CUmemLocation location;
    void *win32HandleMetaData;
    struct {
        unsigned char compressionType;
        unsigned char gpuDirectRDMACapable;
        unsigned short usage;
        unsigned char reserved[4];
    } allocFlags;
} CUmemAllocationProp;
typedef struct {
    CUmemLocation location;
    unsigned int flags;
} CUmemAccessDesc;

/* Inter-process memory: a handle is 64 opaque bytes, passed by value to open it. */
#define CU_IPC_HANDLE_SIZE 64
typedef struct {
    char reserved[CU_IPC_HANDLE_SIZE];
} CUipcMemHandle;
#define CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS 1u

/* Arrays. */
#define CU_AD_FORMAT_UNSIGNED_INT8 0x01u
#define CU_AD_FORMAT_FLOAT 0x20u
typedef struct {
    size_t Width;
    size_t Height;
    unsigned int Format;
    unsigned int NumChannels;
} CUDA_ARRAY_DESCRIPTOR;
typedef struct {
    size_t Width;
    size_t Height;
    size_t Depth;
    unsigned int Format;
    unsigned int NumChannels;
    unsigned int Flags;
} CUDA_ARRAY3D_DESCRIPTOR;

CUresult cuInit(unsigned int flags);
CUresult cuDriverGetVersion(int *version);
CUresult cuDeviceGet(CUdevice *device, int ordinal);
CUresult cuDeviceGetCount(int *count);
CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev);

CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev);
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev);
CUresult cuCtxSetCurrent(CUcontext ctx);
CUresult cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev);
/* params: a creation-parameters struct, or NULL. */
CUresult cuCtxCreate_v4(CUcontext *pctx, void *params, unsigned int flags, CUdevice dev);
CUresult cuCtxDestroy_v2(CUcontext ctx);

CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize);
/* The pre-3.2 entry point: 32-bit pointer and size. */
CUresult cuMemAlloc(unsigned int *dptr, unsigned int bytesize);
CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pitch, size_t widthBytes, size_t height,
                            unsigned int elementSizeBytes);
CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags);
CUresult cuMemFree_v2(CUdeviceptr dptr);
CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total_bytes);

CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream stream);
CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream stream);
CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                                 CUstream stream);
CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream stream);
CUresult cuDeviceGetDefaultMemPool(CUmemoryPool *pool, CUdevice dev);

CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size,
                     const CUmemAllocationProp *prop, unsigned long long flags);
CUresult cuMemRelease(CUmemGenericAllocationHandle handle);
CUresult cuMemAddressReserve(CUdeviceptr *ptr, size_t size, size_t alignment, CUdeviceptr addr,
                             unsigned long long flags);
CUresult cuMemAddressFree(CUdeviceptr ptr, size_t size);
CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                  unsigned long long flags);
CUresult cuMemUnmap(CUdeviceptr ptr, size_t size);
CUresult cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc, size_t count);
/* For a POSIX descriptor, shareableHandle points to an int that receives it; to import, pass
 * the descriptor's value itself as osHandle. */
CUresult cuMemExportToShareableHandle(void *shareableHandle, CUmemGenericAllocationHandle handle,
                                      unsigned int handleType, unsigned long long flags);
CUresult cuMemImportFromShareableHandle(CUmemGenericAllocationHandle *handle, void *osHandle,
                                        unsigned int handleType);

CUresult cuIpcGetMemHandle(CUipcMemHandle *handle, CUdeviceptr dptr);
CUresult cuIpcOpenMemHandle_v2(CUdeviceptr *pdptr, CUipcMemHandle handle, unsigned int flags);
CUresult cuIpcCloseMemHandle(CUdeviceptr dptr);

CUresult cuDeviceCanAccessPeer(int *canAccessPeer, CUdevice dev, CUdevice peerDev);
CUresult cuCtxEnablePeerAccess(CUcontext peerContext, unsigned int flags);

CUresult cuArrayCreate_v2(CUarray *array, const CUDA_ARRAY_DESCRIPTOR *desc);
CUresult cuArray3DCreate_v2(CUarray *array, const CUDA_ARRAY3D_DESCRIPTOR *desc);
CUresult cuArrayDestroy(CUarray array);
CUresult cuMipmappedArrayCreate(CUmipmappedArray *mm, const CUDA_ARRAY3D_DESCRIPTOR *desc,
                                unsigned int levels);
CUresult cuMipmappedArrayDestroy(CUmipmappedArray mm);

CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion,
                             unsigned long long flags, CUdriverProcAddressQueryResult *status);

#ifdef __cplusplus
}
#endif

#endif
