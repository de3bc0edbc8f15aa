# kvtierd: the daemon's config and metrics (kvtier_daemon) and the executable.
# Included by the top CMakeLists.txt right after the kvtier_core target (its daemon part).
add_library(kvtier_daemon STATIC
  daemon/config.cc
  daemon/metrics.cc
)
target_link_libraries(kvtier_daemon PUBLIC kvtier_core)
target_compile_options(kvtier_daemon PRIVATE ${KVTIER_WARNINGS})

add_executable(kvtierd daemon/kvtierd_main.cc)
target_link_libraries(kvtierd PRIVATE kvtier_daemon)
target_compile_options(kvtierd PRIVATE ${KVTIER_WARNINGS})
target_compile_definitions(kvtierd PRIVATE KVTIER_VERSION_STRING="${PROJECT_VERSION}")
install(TARGETS kvtierd RUNTIME DESTINATION bin)
# The Python wheel carries kvtierd too (kvtier/bin/kvtierd; `kvtierd` on the PATH after
# `pip install`, through kvtier.daemon:main), so one install gives the engine side and the daemon.
if(KVTIER_BUILD_PYTHON)
  install(TARGETS kvtierd RUNTIME DESTINATION kvtier/bin COMPONENT python)
endif()
