#!/bin/sh
# Kubernetes node preparation shared by every Kubernetes image (ubuntu-k8s-*, debian-12-k8s-node), in the
# order image-builder's roles run: node -> containerd -> kubernetes -> release -> hold -> sysprep.
# Source of truth: Containerfiles/_shared/node-prep.sh; scripts/gen-k8s-images copies it into each image
# directory as files/node-prep.sh (do not edit the copies). Runs inside a Containerfile RUN step:
# nothing is started, units are only enabled.
#   node-prep.sh node                   modules, sysctls, swap off, no unattended upgrades, auditd/chrony
#   node-prep.sh containerd PAUSE_IMAGE containerd (systemd cgroup driver), /etc/crictl.yaml
#   node-prep.sh kube DIR               install the kube binaries found in DIR (any subset; none is fine)
#   node-prep.sh release FILE           /etc/assembler-release (FILE + detected versions), /etc/kubernetes-version
#   node-prep.sh hold                   apt-mark hold every installed package
#   node-prep.sh sysprep                machine-id, SSH host keys, cloud-init, logs, caches
set -eu

node() {
    # Loaded at every boot by systemd-modules-load, before systemd-sysctl applies the bridge sysctls.
    printf 'overlay\nbr_netfilter\n' > /etc/modules-load.d/kubernetes.conf
    cat > /etc/sysctl.d/99-kubernetes.conf <<'CONF'
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
net.ipv4.ip_forward = 1
net.ipv6.conf.all.forwarding = 1
net.ipv6.conf.all.disable_ipv6 = 0
net.ipv4.tcp_congestion_control = bbr
vm.overcommit_memory = 1
kernel.panic = 10
kernel.panic_on_oops = 1
fs.inotify.max_user_instances = 8192
fs.inotify.max_user_watches = 524288
CONF
    # kubelet refuses to run with swap on: no swap entries, and swap.target can never be reached.
    if [ -f /etc/fstab ]; then sed -i '/\sswap\s/d' /etc/fstab; fi
    systemctl mask swap.target
    # A node changes only by replacing its image: no package updates behind the cluster's back.
    systemctl mask apt-daily.timer apt-daily-upgrade.timer unattended-upgrades.service
    for unit in auditd chrony; do
        if systemctl cat "$unit.service" >/dev/null 2>&1; then systemctl enable "$unit.service"; fi
    done
    if systemctl cat conntrackd.service >/dev/null 2>&1; then systemctl disable conntrackd.service; fi
}

containerd_cfg() {
    pause=$1
    mkdir -p /etc/containerd
    # Config version 2 is read by containerd 1.6, 1.7 and 2.x (2.x migrates it in memory).
    cat > /etc/containerd/config.toml <<CONF
version = 2

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause"

[plugins."io.containerd.grpc.v1.cri".containerd]
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = true
CONF
    cat > /etc/crictl.yaml <<'CONF'
runtime-endpoint: unix:///run/containerd/containerd.sock
image-endpoint: unix:///run/containerd/containerd.sock
timeout: 10
CONF
    if [ -x /usr/local/bin/containerd ]; then containerd_unit; fi
    systemctl enable containerd.service
}

containerd_unit() {
    # The release tarball ships no unit; this is upstream's containerd.service with the tarball's path.
    cat > /etc/systemd/system/containerd.service <<'UNIT'
[Unit]
Description=containerd container runtime
Documentation=https://containerd.io
After=network.target local-fs.target dbus.service

[Service]
ExecStartPre=-/sbin/modprobe overlay
ExecStart=/usr/local/bin/containerd
Type=notify
Delegate=yes
KillMode=process
Restart=always
RestartSec=5
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
OOMScoreAdjust=-999

[Install]
WantedBy=multi-user.target
UNIT
}

kube() {
    dir=$1
    for bin in kubeadm kubelet kubectl; do
        if [ -f "$dir/$bin" ]; then install -m 0755 "$dir/$bin" "/usr/bin/$bin"; fi
    done
    if [ -f "$dir/crictl.tar.gz" ]; then tar -xzf "$dir/crictl.tar.gz" -C /usr/local/bin crictl; fi
    if [ -f "$dir/cni-plugins.tgz" ]; then mkdir -p /opt/cni/bin && tar -xzf "$dir/cni-plugins.tgz" -C /opt/cni/bin; fi
    if [ -f "$dir/containerd.tar.gz" ]; then tar -xzf "$dir/containerd.tar.gz" -C /usr/local; fi
    if [ -f "$dir/runc" ]; then install -m 0755 "$dir/runc" /usr/local/sbin/runc; fi
    if [ -x /usr/bin/kubelet ]; then kubelet_units; fi
}

kubelet_units() {
    # kubelet.service and the kubeadm drop-in as the Kubernetes packages ship them.
    cat > /etc/systemd/system/kubelet.service <<'UNIT'
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
UNIT
    mkdir -p /etc/systemd/system/kubelet.service.d /etc/kubernetes/manifests /var/lib/kubelet
    cat > /etc/systemd/system/kubelet.service.d/10-kubeadm.conf <<'UNIT'
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
UNIT
    # Enabled, not started: kubeadm join/init writes its configuration, then kubelet settles.
    systemctl enable kubelet.service
}

version_of() {
    # "<tool> <args>" -> its version number, or "none" when the tool is absent.
    if command -v "$1" >/dev/null 2>&1; then
        "$@" 2>/dev/null | grep -oE 'v?[0-9]+\.[0-9]+\.[0-9]+[^ ]*' | head -n 1 | sed 's/^v//'
    else
        echo none
    fi
}

release() {
    kubernetes=$(version_of kubelet --version)
    {
        grep -v '^#' "$1"
        echo "SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-unset}"
        echo "KUBERNETES_VERSION=$kubernetes"
        echo "KUBEADM_VERSION=$(version_of kubeadm version -o short)"
        echo "KUBECTL_VERSION=$(version_of kubectl version --client)"
        echo "CRICTL_VERSION=$(version_of crictl --version)"
        echo "CONTAINERD_VERSION=$(version_of containerd --version | sed 's/~.*//')"
        echo "RUNC_VERSION=$(version_of runc --version | sed 's/[+~].*//')"
    } > /etc/assembler-release
    chmod 0644 /etc/assembler-release
    if [ "$kubernetes" != none ]; then echo "v$kubernetes" > /etc/kubernetes-version; fi
}

hold() {
    dpkg-query -W -f '${Package}\n' | xargs apt-mark hold >/dev/null
}

sysprep() {
    rm -f /etc/ssh/ssh_host_* /root/.ssh/authorized_keys
    truncate -s 0 /etc/machine-id
    rm -f /var/lib/dbus/machine-id
    if command -v cloud-init >/dev/null 2>&1; then cloud-init clean --logs >/dev/null 2>&1 || true; fi
    rm -rf /var/lib/cloud/* /run/cloud-init
    rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /var/lib/dpkg/*-old
    rm -f /var/cache/ldconfig/aux-cache /root/.bash_history /var/lib/systemd/random-seed
    rm -rf /var/cache/man/* /var/log/journal/* /var/crash/* /swapfile
    find /var/log -type f -exec truncate -s 0 {} +
    rm -rf /tmp/* /var/tmp/*
}

cmd=${1:?usage: node-prep.sh node|containerd PAUSE|kube DIR|release FILE|hold|sysprep}
shift
case "$cmd" in
    node) node ;;
    containerd) containerd_cfg "${1:?pause image}" ;;
    kube) kube "${1:?directory}" ;;
    release) release "${1:?release file}" ;;
    hold) hold ;;
    sysprep) sysprep ;;
    *) echo "node-prep.sh: unknown step $cmd" >&2; exit 2 ;;
esac
