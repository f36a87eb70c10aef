//! Chooses the training device. The binary links only libtorch's CPU libraries; CUDA support is
//! loaded at start-up with `dlopen("libtorch_cuda.so")`, so one binary runs on a GPU host with the
//! CUDA libraries and on a CPU-only image without them.

use std::ffi::{CStr, CString};

use tch::Device;

use crate::cli::DeviceArg;
use crate::Error;

/// Loads `libtorch_cuda.so` (searched like any shared library: RUNPATH, `LD_LIBRARY_PATH`, the
/// linker cache) into the process, which registers libtorch's CUDA backend.
pub fn load_cuda_backend() -> Result<(), String> {
    let name = CString::new("libtorch_cuda.so").expect("no NUL");
    // SAFETY: dlopen with a valid C string; the handle is kept for the life of the process.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns a thread-local C string or null.
        let msg = unsafe { libc::dlerror() };
        if msg.is_null() {
            return Err("dlopen failed".into());
        }
        // SAFETY: non-null pointer from dlerror, valid until the next dl* call.
        return Err(unsafe { CStr::from_ptr(msg) }
            .to_string_lossy()
            .into_owned());
    }
    Ok(())
}

/// Resolves `--device`. `auto` falls back to the CPU; `cuda` without a usable GPU is an error.
pub fn resolve(choice: DeviceArg) -> Result<Device, Error> {
    match choice {
        DeviceArg::Cpu => Ok(Device::Cpu),
        DeviceArg::Auto => {
            let _ = load_cuda_backend();
            Ok(if tch::Cuda::is_available() {
                Device::Cuda(0)
            } else {
                Device::Cpu
            })
        }
        DeviceArg::Cuda => {
            let why = match load_cuda_backend() {
                Err(e) => format!("libtorch_cuda.so could not be loaded: {e}"),
                Ok(()) if !tch::Cuda::is_available() => {
                    "libtorch_cuda.so is loaded but no CUDA device is visible (driver missing or NVIDIA_VISIBLE_DEVICES empty?)".into()
                }
                Ok(()) => return Ok(Device::Cuda(0)),
            };
            Err(Error::NoCuda(why))
        }
    }
}

/// Short device name for logs and metrics ("cpu", "cuda:0").
pub fn name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".into(),
    }
}
