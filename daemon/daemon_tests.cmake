# kvtierd's tests. Included by the top CMakeLists.txt inside if(KVTIER_BUILD_TESTS), after
# kvtier_test() is defined. The ctest names carry a prefix (daemon_config., daemon_metrics.,
# kvtierd.) so that `ctest -R 'daemon_config|daemon_metrics|kvtierd'` selects them.
function(kvtier_daemon_test name prefix)
  add_executable(${name} ${ARGN})
  target_link_libraries(${name} PRIVATE kvtier_daemon GTest::gtest GTest::gtest_main)
  target_include_directories(${name} PRIVATE ${XXHASH_INCLUDE_DIR})
  target_compile_options(${name} PRIVATE ${KVTIER_WARNINGS})
  gtest_discover_tests(${name} TEST_PREFIX ${prefix} DISCOVERY_TIMEOUT 120 PROPERTIES TIMEOUT 120)
endfunction()

# The config file, environment and --set layers; every refusal names key, value and origin.
kvtier_daemon_test(kvtier_daemon_config_test daemon_config. tests/daemon_config_test.cc)
# /metrics and /healthz over real loopback HTTP, with a real Store behind them.
kvtier_daemon_test(kvtier_daemon_metrics_test daemon_metrics. tests/daemon_metrics_test.cc)
# Real kvtierd processes: --check-config, SIGTERM flush and restart from NVMe, tenants,
# SIGKILL mid-traffic. NVMe files go under $KVTIER_TEST_DIR, else the build directory
# (O_DIRECT needs a block-backed filesystem; /tmp may be tmpfs).
kvtier_daemon_test(kvtier_kvtierd_process_test kvtierd. tests/kvtierd_process_test.cc)
add_dependencies(kvtier_kvtierd_process_test kvtierd)
if(TARGET kvtier_cli)  # `kvtier ls` / `kvtier stats` against it
  add_dependencies(kvtier_kvtierd_process_test kvtier_cli)
  target_compile_definitions(kvtier_kvtierd_process_test PRIVATE KVTIER_CLI_PATH="$<TARGET_FILE:kvtier_cli>")
endif()
target_compile_definitions(kvtier_kvtierd_process_test PRIVATE KVTIERD_PATH="$<TARGET_FILE:kvtierd>"
  KVTIERD_TEST_SCRATCH="${CMAKE_BINARY_DIR}/kvtierd_test_tmp"
  KVTIERD_EXAMPLE_CONFIG="${CMAKE_SOURCE_DIR}/daemon/kvtierd.example.toml")
