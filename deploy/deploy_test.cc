// Checks deploy/: every cluster file loads, the Kubernetes manifests parse and
// carry what they must, the systemd units pass `systemd-analyze verify`, and
// the Dockerfile installs with the script CI runs.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "common/config/cluster_config.h"
#include "gtest/gtest.h"
#include "yaml-cpp/yaml.h"

namespace chord {
namespace {

namespace fs = std::filesystem;

const fs::path kDeploy = CHORD_DEPLOY_DIR;

std::vector<fs::path> FilesIn(const fs::path& dir, const std::string& extension) {
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() == extension) files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

TEST(DeployTest, EveryClusterFileLoads) {
  const std::vector<fs::path> files = FilesIn(kDeploy / "cluster", ".yaml");
  ASSERT_GE(files.size(), 3u);
  for (const fs::path& file : files) {
    absl::StatusOr<ClusterConfig> config = LoadClusterConfig(file.string());
    ASSERT_TRUE(config.ok()) << file << ": " << config.status();
    EXPECT_FALSE(config->loader.model.empty()) << file;
    EXPECT_GE(config->workers.size(), 2u) << file;
    EXPECT_GE(static_cast<size_t>(config->coordinator.min_workers), 1u) << file;
    EXPECT_LE(static_cast<size_t>(config->coordinator.min_workers), config->workers.size())
        << file << ": min_workers can never be reached";
  }
}

// Kubernetes objects by "Kind/name", from every manifest.
std::map<std::string, YAML::Node> LoadManifests() {
  std::map<std::string, YAML::Node> objects;
  for (const fs::path& file : FilesIn(kDeploy / "k8s", ".yaml")) {
    for (const YAML::Node& doc : YAML::LoadAllFromFile(file.string())) {
      EXPECT_TRUE(doc["apiVersion"] && doc["kind"] && doc["metadata"]["name"]) << file;
      objects[doc["kind"].as<std::string>() + "/" + doc["metadata"]["name"].as<std::string>()] =
          doc;
    }
  }
  return objects;
}

TEST(DeployTest, ConfigMapHoldsTheKubernetesClusterFile) {
  std::map<std::string, YAML::Node> objects = LoadManifests();
  ASSERT_TRUE(objects.contains("ConfigMap/chord-cluster"));
  const std::string embedded =
      objects["ConfigMap/chord-cluster"]["data"]["cluster.yaml"].as<std::string>();
  absl::StatusOr<ClusterConfig> config = ParseClusterConfig(embedded);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(embedded, ReadFile(kDeploy / "cluster" / "kubernetes.yaml"));

  // StatefulSet pod names are the workers' ids: replicas and the list agree.
  ASSERT_TRUE(objects.contains("StatefulSet/chord-worker"));
  const int replicas = objects["StatefulSet/chord-worker"]["spec"]["replicas"].as<int>();
  ASSERT_EQ(static_cast<int>(config->workers.size()), replicas);
  for (int i = 0; i < replicas; ++i) {
    EXPECT_NE(config->FindWorker("chord-worker-" + std::to_string(i)), nullptr) << i;
  }
}

TEST(DeployTest, WorkloadsCarryProbesResourcesVolumesAndTheConfig) {
  std::map<std::string, YAML::Node> objects = LoadManifests();
  const std::vector<std::string> workloads = {
      "Deployment/chord-coordinator", "Deployment/chord-loader", "StatefulSet/chord-worker"};
  for (const std::string& name : workloads) {
    ASSERT_TRUE(objects.contains(name)) << name;
    const YAML::Node spec = objects[name]["spec"]["template"]["spec"];
    EXPECT_GT(spec["terminationGracePeriodSeconds"].as<int>(), 0) << name;
    std::map<std::string, std::string> volume_sources;
    for (const YAML::Node& volume : spec["volumes"]) {
      if (volume["configMap"]) volume_sources[volume["name"].as<std::string>()] = "configMap";
      if (volume["secret"]) volume_sources[volume["name"].as<std::string>()] = "secret";
    }
    EXPECT_EQ(volume_sources["config"], "configMap") << name;
    EXPECT_EQ(volume_sources["keys"], "secret") << name;
    ASSERT_EQ(spec["containers"].size(), 1u) << name;
    const YAML::Node container = spec["containers"][0];
    EXPECT_TRUE(container["readinessProbe"].IsMap()) << name;
    EXPECT_TRUE(container["livenessProbe"].IsMap()) << name;
    EXPECT_TRUE(container["resources"]["requests"]["memory"]) << name;
    EXPECT_TRUE(container["resources"]["limits"]["memory"]) << name;
    bool mounts_config = false;
    for (const YAML::Node& mount : container["volumeMounts"]) {
      if (mount["name"].as<std::string>() == "config") {
        mounts_config = mount["mountPath"].as<std::string>() == "/etc/chord";
      }
    }
    EXPECT_TRUE(mounts_config) << name;
    const std::vector<std::string> args = container["args"].as<std::vector<std::string>>();
    const auto config_flag = std::find(args.begin(), args.end(), "--config");
    ASSERT_NE(config_flag, args.end()) << name;
    EXPECT_EQ(*(config_flag + 1), "/etc/chord/cluster.yaml") << name;
    // Each workload has a Service selecting its pods.
    const std::string service = "Service/" + objects[name]["metadata"]["name"].as<std::string>();
    ASSERT_TRUE(objects.contains(service)) << service;
    EXPECT_EQ(objects[service]["spec"]["selector"]["app.kubernetes.io/component"].as<std::string>(),
              objects[name]["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
                  .as<std::string>());
  }
  // The API's health goes through gRPC's health protocol.
  EXPECT_TRUE(objects["Deployment/chord-coordinator"]["spec"]["template"]["spec"]["containers"][0]
                     ["readinessProbe"]["grpc"]);
  EXPECT_TRUE(objects.contains("Secret/chord-curve"));
  EXPECT_TRUE(objects.contains("Secret/chord-api-token"));
}

std::string RunCommand(const std::string& command, int* status) {
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  std::string output;
  if (pipe == nullptr) {
    *status = -1;
    return output;
  }
  char buffer[512];
  while (std::fgets(buffer, sizeof(buffer), pipe) != nullptr) output += buffer;
  *status = ::pclose(pipe);
  return output;
}

// The processes speak sd_notify, so their units wait for READY=1.
TEST(DeployTest, SystemdUnitsWaitForReadiness) {
  const std::vector<fs::path> units = FilesIn(kDeploy / "systemd", ".service");
  ASSERT_EQ(units.size(), 3u);
  for (const fs::path& unit : units) {
    const std::string text = ReadFile(unit);
    EXPECT_NE(text.find("\nType=notify\n"), std::string::npos) << unit;
    EXPECT_NE(text.find("\nNotifyAccess=main\n"), std::string::npos) << unit;
    EXPECT_NE(text.find("\nKillSignal=SIGTERM\n"), std::string::npos) << unit;
  }
}

TEST(DeployTest, SystemdUnitsVerify) {
  if (std::system("command -v systemd-analyze >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "systemd-analyze not installed";
  }
  // verify checks that ExecStart's binary exists: point it at stand-ins.
  const fs::path dir = fs::temp_directory_path() / ("chord_units_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "bin");
  for (const char* binary : {"chord-loader", "chord-worker", "chord-coordinator"}) {
    std::ofstream(dir / "bin" / binary) << "#!/bin/sh\n";
    fs::permissions(dir / "bin" / binary, fs::perms::owner_all);
  }
  std::string units;
  for (const fs::path& unit : FilesIn(kDeploy / "systemd", ".service")) {
    std::string text = ReadFile(unit);
    for (size_t at = text.find("/usr/local/bin/"); at != std::string::npos;
         at = text.find("/usr/local/bin/", at)) {
      text.replace(at, 15, (dir / "bin").string() + "/");
    }
    std::string name = unit.filename().string();
    if (name.ends_with("@.service")) name.insert(name.size() - 8, "w0");  // an instance
    std::ofstream(dir / name) << text;
    units += " " + (dir / name).string();
  }
  ASSERT_EQ(units.empty(), false);
  int status = 0;
  const std::string output = RunCommand("systemd-analyze verify --man=no" + units, &status);
  fs::remove_all(dir);
  if (output.find("Failed to") != std::string::npos && output.find("bus") != std::string::npos) {
    GTEST_SKIP() << "systemd-analyze cannot run here: " << output;
  }
  EXPECT_EQ(status, 0) << output;
  EXPECT_EQ(output, "") << "systemd-analyze findings";
}

TEST(DeployTest, DockerfileUsesTheCiInstallScript) {
  for (const char* file : {"Dockerfile", "Dockerfile.cuda"}) {
    const std::string dockerfile = ReadFile(kDeploy / "docker" / file);
    EXPECT_NE(dockerfile.find("FROM debian:12 AS build"), std::string::npos) << file;
    EXPECT_NE(dockerfile.find("FROM debian:12-slim AS runtime"), std::string::npos) << file;
    EXPECT_NE(dockerfile.find("RUN bash scripts/install-deps.sh"), std::string::npos) << file;
    EXPECT_NE(dockerfile.find("useradd --system --uid 10001"), std::string::npos) << file;
    for (const char* binary : {"chord-loader", "chord-worker", "chord-coordinator"}) {
      EXPECT_NE(dockerfile.find(std::string("/src/build/bin/") + binary), std::string::npos)
          << file << " " << binary;
    }
  }
  EXPECT_NE(ReadFile(kDeploy / "docker" / "Dockerfile.cuda").find("cuda-nvcc-13-0"),
            std::string::npos);
  const std::string ci = ReadFile(fs::path(CHORD_SOURCE_DIR) / ".ci" / "run");
  EXPECT_NE(ci.find("bash scripts/install-deps.sh"), std::string::npos)
      << "CI and the image must install dependencies the same way";
}

}  // namespace
}  // namespace chord
