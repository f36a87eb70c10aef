// The trainer's door to libtorch's distributed engine (c10d): a TCPStore rendezvous and a Gloo
// process group, both libtorch's own (libtorch_cpu.so), behind a small C interface that
// trainer/src/dist.rs calls. Tensors arrive as the at::Tensor* that tch's handles are.
//
// Every function catches what libtorch throws and returns the message (without the C++
// backtrace) in `err`, so no exception crosses into Rust.

#include <ATen/ATen.h>
#include <c10/util/Logging.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

struct envbuild_pg {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group; // null until envbuild_pg_connect
  int rank;
  int world;
  std::chrono::milliseconds timeout;
};

namespace {

void put_error(char* err, size_t len, const std::string& message) {
  if (err == nullptr || len == 0) {
    return;
  }
  size_t n = std::min(len - 1, message.size());
  std::memcpy(err, message.data(), n);
  err[n] = '\0';
}

template <typename F>
int guarded(char* err, size_t len, F&& f) {
  try {
    f();
    return 0;
  } catch (const c10::Error& e) {
    put_error(err, len, e.what_without_backtrace());
  } catch (const std::exception& e) {
    put_error(err, len, e.what());
  } catch (...) {
    put_error(err, len, "unknown C++ exception");
  }
  return -1;
}

} // namespace

extern "C" {

// Joins the rendezvous: rank 0 serves the TCPStore at host:port, the others connect to it
// (retrying until `timeout_ms`). Returns NULL and a message on failure.
envbuild_pg* envbuild_pg_new(
    const char* host,
    uint16_t port,
    int rank,
    int world,
    int64_t timeout_ms,
    char* err,
    size_t err_len) {
  // c10d logs each failed connection attempt with a C++ backtrace; the error returned here says
  // the same in one line. TORCH_CPP_LOG_LEVEL, when set, is the user's choice.
  if (std::getenv("TORCH_CPP_LOG_LEVEL") == nullptr) {
    FLAGS_caffe2_log_level = 3; // FATAL only
  }
  envbuild_pg* out = nullptr;
  guarded(err, err_len, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions so;
    so.port = port;
    so.isServer = rank == 0;
    so.numWorkers = static_cast<size_t>(world);
    so.waitWorkers = true;
    so.timeout = timeout;
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), so);
    out = new envbuild_pg{store, {}, rank, world, timeout};
  });
  return out;
}

// Makes the Gloo process group over the store: every pair of ranks connects.
int envbuild_pg_connect(envbuild_pg* pg, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    auto opts = c10d::ProcessGroupGloo::Options::create(pg->timeout);
    // As torch.distributed does: GLOO_SOCKET_IFNAME names the interface, else the address
    // this host's name resolves to (loopback when it resolves to none).
    const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
    opts->devices.push_back(
        ifname != nullptr && *ifname != '\0'
            ? c10d::ProcessGroupGloo::createDeviceForInterface(ifname)
            : c10d::ProcessGroupGloo::createDefaultDevice());
    pg->group = c10::make_intrusive<c10d::ProcessGroupGloo>(
        pg->store, pg->rank, pg->world, opts);
  });
}

void envbuild_pg_free(envbuild_pg* pg) {
  delete pg;
}

// store[key] = value (bytes).
int envbuild_pg_set(
    envbuild_pg* pg,
    const char* key,
    const uint8_t* value,
    size_t len,
    char* err,
    size_t err_len) {
  return guarded(err, err_len, [&] {
    pg->store->set(std::string(key), std::vector<uint8_t>(value, value + len));
  });
}

// Waits (up to the group's timeout) for `key`, then copies up to `cap` bytes of its value into
// `value` and its whole length into `*len`.
int envbuild_pg_get(
    envbuild_pg* pg,
    const char* key,
    uint8_t* value,
    size_t cap,
    size_t* len,
    char* err,
    size_t err_len) {
  return guarded(err, err_len, [&] {
    auto v = pg->store->get(std::string(key));
    std::memcpy(value, v.data(), std::min(cap, v.size()));
    *len = v.size();
  });
}

// Whether `key` is in the store now (1) or not (0), without waiting.
int envbuild_pg_check(envbuild_pg* pg, const char* key, int* present, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    *present = pg->store->check({std::string(key)}) ? 1 : 0;
  });
}

// Closes this rank's Gloo connections (the peers' collectives fail at once) and keeps the store.
void envbuild_pg_disconnect(envbuild_pg* pg) {
  pg->group.reset();
}

// store[key] += delta, returning the new value (delta 0 reads a counter without waiting).
int envbuild_pg_add(
    envbuild_pg* pg,
    const char* key,
    int64_t delta,
    int64_t* value,
    char* err,
    size_t err_len) {
  return guarded(err, err_len, [&] {
    *value = pg->store->add(std::string(key), delta);
  });
}

// Sums `t` over all ranks, in place.
int envbuild_pg_allreduce_sum(
    envbuild_pg* pg,
    at::Tensor* t,
    char* err,
    size_t err_len) {
  return guarded(err, err_len, [&] {
    std::vector<at::Tensor> ts{*t};
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::SUM;
    pg->group->allreduce(ts, o)->wait(pg->timeout);
  });
}

// Copies rank `root`'s `t` into every rank's `t`.
int envbuild_pg_broadcast(
    envbuild_pg* pg,
    at::Tensor* t,
    int root,
    char* err,
    size_t err_len) {
  return guarded(err, err_len, [&] {
    std::vector<at::Tensor> ts{*t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    pg->group->broadcast(ts, o)->wait(pg->timeout);
  });
}

} // extern "C"
