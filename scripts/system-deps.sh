# Installs the system packages LakeLink's build needs (sourced by the set-up
# scripts): cmake and clang/libclang build llama.cpp for the local model;
# gdb lets the tests fault the model process.
need=()
command -v cmake >/dev/null || need+=(cmake)
command -v clang >/dev/null || need+=(clang)
ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1 || need+=(libclang-dev)
# The tests fault the model process for real with gdb.
command -v gdb >/dev/null || need+=(gdb)

# Installs Debian packages (as root, else with sudo), refreshing the package
# lists only when the first try fails.
install_debian_packages() {
  local sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get install -y -qq "$@" >/dev/null || {
    $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq "$@" >/dev/null
  }
}

if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]} (Debian packages: the build and the tests need them)"
  install_debian_packages "${need[@]}"
fi
