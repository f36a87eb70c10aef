// Declarations of the Gloo types that torch/csrc/distributed/c10d/ProcessGroupGloo.hpp names.
//
// The torch wheel ships libtorch with Gloo compiled in (libtorch_cpu.so) and ships c10d's
// headers, but not Gloo's. ProcessGroupGloo.hpp holds every Gloo object by shared_ptr or
// unique_ptr, so the compiler needs only these names (and the virtual functions that the
// header's inline GlooStore overrides) to lay out ProcessGroupGloo exactly as libtorch did.
// Nothing here is defined or called by the shim: every Gloo function the shim reaches runs inside
// libtorch. GLOO_STORE_HAS_STORE_V2 stays undefined, so the header's v2 overrides are left out;
// the shim never constructs a GlooStore (libtorch's own constructor does).
#pragma once

#include <chrono>
#include <string>
#include <vector>

namespace gloo {
// ProcessGroupGloo::setTimeout, an inline virtual whose vtable (and so whose code) libtorch
// alone emits, names Context::setTimeout: declared, never defined here.
class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};
namespace transport {
class Device;
class UnboundBuffer;
} // namespace transport
namespace rendezvous {
class Store {
 public:
  virtual ~Store() = default;
  virtual void set(const std::string& key, const std::vector<char>& data) = 0;
  virtual std::vector<char> get(const std::string& key) = 0;
  virtual void wait(const std::vector<std::string>& keys) = 0;
  virtual void wait(
      const std::vector<std::string>& keys,
      const std::chrono::milliseconds& timeout) = 0;
};
} // namespace rendezvous
} // namespace gloo
