// An engine-style client of the Veltrix config sidecar in C++17 on gRPC C++.
//
// A background thread follows the modules with Watch and publishes each accepted value as
// an immutable Config through an atomic shared pointer; the "game loop" on the main
// thread loads that pointer every tick, never locking and never waiting on the network.
// This is the pattern an Unreal or custom C++ engine would copy.
//
//   VELTRIX_SIDECAR_ADDR=unix:/run/veltrix/sidecar.sock ./engine_client KEY [TICKS]
//
// Prints, for people and for tests:
//   ready REVISION
//   tick N revision REVISION JSON     (when the game loop first sees a new value)
//   reconnect REVISION CODE MESSAGE   (the watcher lost the stream and resumes after it)

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <thread>

#include "grpc/health/v1/health.grpc.pb.h"
#include "veltrix/config/v1/config.grpc.pb.h"

namespace {

using veltrix::config::v1::ConfigService;
using veltrix::config::v1::WatchRequest;
using veltrix::config::v1::WatchResponse;

// Immutable once published: the game loop may hold it as long as it likes.
struct Config {
  uint64_t revision = 0;
  std::string json;
};

std::shared_ptr<grpc::Channel> Connect(const std::string& addr) {
  grpc::ChannelArguments args;
  // Over a unix socket gRPC would send the socket path as the HTTP/2 :authority, which
  // the sidecar refuses as malformed; any plain host name will do.
  if (addr.rfind("unix:", 0) == 0) args.SetString(GRPC_ARG_DEFAULT_AUTHORITY, "localhost");
  // gRPC's own reconnection backoff grows to two minutes by default; a sidecar that
  // restarts is back within a second or two, so try again soon and often. (The minimum
  // backoff is also the connection timeout, so it keeps its default.)
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  return grpc::CreateCustomChannel(addr, grpc::InsecureChannelCredentials(), args);
}

bool WaitServing(const std::shared_ptr<grpc::Channel>& channel, std::chrono::seconds limit) {
  auto health = grpc::health::v1::Health::NewStub(channel);
  const auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
    grpc::health::v1::HealthCheckRequest request;
    grpc::health::v1::HealthCheckResponse response;
    if (health->Check(&context, request, &response).ok() &&
        response.status() == grpc::health::v1::HealthCheckResponse::SERVING) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

// Follows `key` until `stop`, publishing each accepted value into `current`. A revision
// only means something in its history (`epoch`), so both are passed back on resume.
void Watch(const std::shared_ptr<grpc::Channel>& channel, const std::string& key, uint64_t epoch,
           std::shared_ptr<const Config>* current, const std::atomic<bool>& stop) {
  auto config = ConfigService::NewStub(channel);
  uint64_t seen = std::atomic_load(current)->revision;
  std::mt19937 random{std::random_device{}()};
  double backoff = 0.05;
  while (!stop) {
    grpc::ClientContext context;
    // Wait for the channel to reconnect rather than fail at once while the sidecar is
    // restarting; gRPC retries the connection with the backoff set in Connect().
    context.set_wait_for_ready(true);
    WatchRequest request;
    request.add_keys(key);
    request.set_start_revision(seen);
    request.set_epoch(epoch);
    auto stream = config->Watch(&context, request);
    WatchResponse message;
    while (stream->Read(&message)) {
      backoff = 0.05;
      if (message.kind() == WatchResponse::PROGRESS || message.kind() == WatchResponse::REJECTED) continue;
      seen = message.revision();
      epoch = message.epoch();
      for (const auto& entry : message.entries()) {
        if (entry.key() != key) continue;
        auto next = std::make_shared<const Config>(Config{message.revision(), entry.json()});
        std::atomic_store(current, std::shared_ptr<const Config>(next));
      }
    }
    const grpc::Status ended = stream->Finish();
    // The sidecar went away: back off with full jitter, then resume after `seen`.
    std::uniform_real_distribution<double> jitter(0.0, backoff);
    std::this_thread::sleep_for(std::chrono::duration<double>(jitter(random)));
    backoff = std::min(backoff * 2, 2.0);
    std::cout << "reconnect " << seen << " " << ended.error_code() << " " << ended.error_message() << std::endl;
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: engine_client KEY [TICKS]" << std::endl;
    return 64;
  }
  const std::string key = argv[1];
  const long ticks = argc > 2 ? std::strtol(argv[2], nullptr, 10) : -1;
  const char* env = std::getenv("VELTRIX_SIDECAR_ADDR");
  const std::string addr = env != nullptr ? env : "127.0.0.1:7070";

  auto channel = Connect(addr);
  if (!WaitServing(channel, std::chrono::seconds(10))) {
    std::cerr << "the sidecar at " << addr << " was not serving in time" << std::endl;
    return 1;
  }
  auto config = ConfigService::NewStub(channel);
  grpc::ClientContext context;
  veltrix::config::v1::GetRequest request;
  request.set_key(key);
  veltrix::config::v1::GetResponse response;
  const grpc::Status status = config->Get(&context, request, &response);
  if (!status.ok()) {
    std::cerr << "get " << key << ": " << status.error_message() << std::endl;
    return 1;
  }
  std::shared_ptr<const Config> current =
      std::make_shared<const Config>(Config{response.revision(), response.entry().json()});
  std::cout << "ready " << response.revision() << std::endl;

  std::atomic<bool> stop{false};
  std::thread watcher(Watch, channel, key, response.epoch(), &current, std::cref(stop));

  // The game loop: one atomic load per tick, whatever the network does.
  uint64_t shown = 0;
  for (long tick = 0; ticks < 0 || tick < ticks; ++tick) {
    const std::shared_ptr<const Config> config_now = std::atomic_load(&current);
    if (config_now->revision != shown) {
      shown = config_now->revision;
      std::cout << "tick " << tick << " revision " << config_now->revision << " " << config_now->json << std::endl;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  stop = true;
  // The watcher may be blocked in Read; the process ends without joining it.
  watcher.detach();
  return 0;
}
