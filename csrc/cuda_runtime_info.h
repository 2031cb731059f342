// What the CUDA runtime reports, callable whether or not the extension was built with CUDA.
#pragma once

#include <string>

namespace asvp {

// Number of usable CUDA devices; 0 (with the runtime's reason in *why) when there is no driver
// or no device, which is an ordinary situation, not an error.
int cuda_device_count(std::string* why);

// CUDA runtime version the extension was compiled against (e.g. 13000), 0 without CUDA.
int cuda_runtime_version();

// CUDA version the installed driver supports (e.g. 12080), 0 without a driver or without CUDA. A
// driver older than the runtime makes every device unusable (cuda_status then says so).
int cuda_driver_version();

}  // namespace asvp
