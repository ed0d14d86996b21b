from __future__ import annotations

from pathlib import Path

from berth_serving.cgroup import available_cpus, cpu_limit, host_cpus, intra_op_threads


def write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    write(tmp_path, "cpu.max", "150000 100000")
    assert cpu_limit(tmp_path) == 1.5
    assert available_cpus(tmp_path) == min(2, host_cpus())


def test_cgroup_v2_unlimited(tmp_path: Path) -> None:
    write(tmp_path, "cpu.max", "max 100000")
    assert cpu_limit(tmp_path) is None
    assert available_cpus(tmp_path) == host_cpus()


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    write(tmp_path, "cpu/cpu.cfs_quota_us", "100000")
    write(tmp_path, "cpu/cpu.cfs_period_us", "100000")
    assert cpu_limit(tmp_path) == 1.0
    assert available_cpus(tmp_path) == 1


def test_cgroup_v1_combined_controller_dir(tmp_path: Path) -> None:
    write(tmp_path, "cpu,cpuacct/cpu.cfs_quota_us", "50000")
    write(tmp_path, "cpu,cpuacct/cpu.cfs_period_us", "100000")
    assert cpu_limit(tmp_path) == 0.5
    assert available_cpus(tmp_path) == 1  # a fraction of a CPU still gets one thread


def test_cgroup_v1_unlimited(tmp_path: Path) -> None:
    write(tmp_path, "cpu/cpu.cfs_quota_us", "-1")
    write(tmp_path, "cpu/cpu.cfs_period_us", "100000")
    assert cpu_limit(tmp_path) is None


def test_no_cgroup_files_means_host_cpus(tmp_path: Path) -> None:
    assert cpu_limit(tmp_path) is None
    assert available_cpus(tmp_path) == host_cpus()


def test_quota_above_host_is_capped(tmp_path: Path) -> None:
    write(tmp_path, "cpu.max", f"{(host_cpus() + 8) * 100000} 100000")
    assert available_cpus(tmp_path) == host_cpus()


def test_configured_threads_win(tmp_path: Path) -> None:
    write(tmp_path, "cpu.max", "100000 100000")
    assert intra_op_threads(3, tmp_path) == 3
    assert intra_op_threads(0, tmp_path) == 1
