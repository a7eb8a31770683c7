#!/usr/bin/env python3
"""Measure bucket snapshots and restores of visage-dr against rclone and restic.

Run through bench/bucket.sh, which builds the binaries, starts a throw-away
Garage on 127.0.0.1 and sets S3_ENDPOINT, S3_ACCESS_KEY, S3_SECRET_KEY,
GARAGE_PID and GARAGE_DIR. Every step runs once. For each step this records
the wall time, the client's peak RSS (/usr/bin/time -v), Garage's CPU time
(utime + stime of GARAGE_PID from /proc) and the load average before it. A
second, untimed pass sends the writing steps through bench/count_proxy.py to
count their PUT requests. The results go to a JSON file and a Markdown table
on standard output.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
VISAGE = os.path.join(ROOT, "target/release/visage-dr")
LIST_WALK = os.path.join(ROOT, "target/release/examples/list_walk")
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024

# Targets, as ratios.
FULL_VS_ROUTE = 2.0  # full snapshot at least this many times faster than rclone sync + restic backup
INCREMENTAL_VS_LIST = 1.3  # incremental snapshot at most this many times the ListObjectsV2 walk
RSS_LIMIT_MIB = 300


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = args.work
        self.endpoint = os.environ["S3_ENDPOINT"]
        self.port = int(self.endpoint.rsplit(":", 1)[1])
        self.garage_pid = int(os.environ["GARAGE_PID"])
        self.data = os.path.join(self.work, "data")
        self.results = {"steps": {}, "counts": {}, "checks": {}, "sizes": {}}

    # Environments ------------------------------------------------------

    def env(self, endpoint=None) -> dict:
        """Return the environment for every client, pointed at `endpoint`
        (Garage by default, or the counting proxy)."""
        endpoint = endpoint or self.endpoint
        env = dict(os.environ)
        # rclone 1.60 fails to build an S3 client when AWS_CA_BUNDLE is set
        # ("unsupported transport"), and nothing here uses TLS.
        env.pop("AWS_CA_BUNDLE", None)
        env.update({
            "AWS_ACCESS_KEY_ID": os.environ["S3_ACCESS_KEY"],
            "AWS_SECRET_ACCESS_KEY": os.environ["S3_SECRET_KEY"],
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
            "RCLONE_CONFIG": os.path.join(self.work, "rclone.conf"),
            "RCLONE_CONFIG_G_TYPE": "s3",
            "RCLONE_CONFIG_G_PROVIDER": "Other",
            "RCLONE_CONFIG_G_ENDPOINT": endpoint,
            "RCLONE_CONFIG_G_REGION": "us-east-1",
            "RCLONE_CONFIG_G_ACCESS_KEY_ID": os.environ["S3_ACCESS_KEY"],
            "RCLONE_CONFIG_G_SECRET_ACCESS_KEY": os.environ["S3_SECRET_KEY"],
            "RCLONE_CONFIG_G_FORCE_PATH_STYLE": "true",
            "RESTIC_PASSWORD": "visage-dr-bench",
            "RESTIC_CACHE_DIR": os.path.join(self.work, "restic-cache"),
            "VISAGE_DR_LOG": "warn",
        })
        return env

    def restic_s3(self, path: str, endpoint=None) -> str:
        endpoint = endpoint or self.endpoint
        return f"s3:{endpoint}/restic-bucket/{path}"

    # Running -----------------------------------------------------------

    def run(self, argv, endpoint=None) -> str:
        """Run an untimed command and return its standard output."""
        log("$ " + " ".join(argv))
        done = subprocess.run(argv, env=self.env(endpoint), stdout=subprocess.PIPE, text=True, check=True)
        return done.stdout

    def garage_cpu(self) -> float:
        with open(f"/proc/{self.garage_pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # Fields 14 and 15 of proc(5) stat are utime and stime. The split starts at field 3.
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def timed(self, name: str, argv, data_bytes: int, objects: int, json_out=False) -> dict:
        """Run `argv` once under /usr/bin/time -v and record its figures under `name`."""
        time_file = os.path.join(self.work, f"time-{name}.txt")
        load = os.getloadavg()[0]
        log(f"step {name}: " + " ".join(argv))

        cpu_before = self.garage_cpu()
        started = time.monotonic()
        done = subprocess.run(["/usr/bin/time", "-v", "-o", time_file] + argv, env=self.env(),
                              stdout=subprocess.PIPE, text=True)
        wall = time.monotonic() - started
        garage_cpu = self.garage_cpu() - cpu_before

        if done.returncode != 0:
            raise RuntimeError(f"step {name} failed with exit code {done.returncode}: {done.stdout[-2000:]}")
        rss_kib, client_cpu = 0, 0.0
        with open(time_file) as f:
            for line in f:
                key, _, value = line.strip().rpartition(": ")
                if key == "Maximum resident set size (kbytes)":
                    rss_kib = int(value)
                elif key in ("User time (seconds)", "System time (seconds)"):
                    client_cpu += float(value)

        step = {
            "command": " ".join(argv),
            "wall_seconds": round(wall, 2),
            "bytes": data_bytes,
            "objects": objects,
            "mb_per_second": round(data_bytes / 1e6 / wall, 1),
            "objects_per_second": round(objects / wall, 1),
            "peak_rss_mib": round(rss_kib / 1024, 1),
            "client_cpu_seconds": round(client_cpu, 2),
            "garage_cpu_seconds": round(garage_cpu, 2),
            "load_average_before": round(load, 2),
        }
        if json_out:
            step["output"] = json.loads(done.stdout)
        self.results["steps"][name] = step
        log(f"step {name}: {wall:.2f} s, {rss_kib / 1024:.0f} MiB peak RSS, Garage CPU {garage_cpu:.1f} s")
        return step

    def bucket_size(self, bucket: str, prefix: str = "", endpoint=None) -> dict:
        return json.loads(self.run([LIST_WALK, bucket, prefix], endpoint))

    # Steps -------------------------------------------------------------

    def prepare(self):
        log("generating the data set")
        summary = json.loads(self.run([sys.executable, os.path.join(BENCH_DIR, "make_dataset.py"), self.data,
                                       "--seed", str(self.args.seed), *self.args.dataset_args.split()]))
        self.objects, self.bytes = summary["objects"], summary["bytes"]
        self.results["dataset"] = summary
        for bucket in ("src", "repo-bucket", "restic-bucket"):
            self.run(["rclone", "mkdir", "-q", f"G:{bucket}"])
        log("loading the source bucket")
        self.run(["rclone", "copy", "-q", "--transfers", "8", self.data, "G:src"])
        listed = self.bucket_size("src")
        assert listed["objects"] == self.objects, listed
        assert listed["bytes"] == self.bytes, listed

    def visage_snapshot(self, name: str, prefix: str, extra=()):
        return self.timed(name, [VISAGE, "snapshot", "bucket", "--repo", f"s3://repo-bucket/{prefix}",
                                 "--bucket", "src", "--json", *extra], self.bytes, self.objects, json_out=True)

    def mutate(self, count: int, round_number: int) -> list:
        changed = self.run([sys.executable, os.path.join(BENCH_DIR, "make_dataset.py"), self.data,
                            "--seed", str(self.args.seed), *self.args.dataset_args.split(), "--mutate", str(count),
                            "--mutate-round", str(round_number)]).split()
        listing = os.path.join(self.work, f"changed-{round_number}.txt")
        with open(listing, "w") as f:
            f.write("\n".join(changed) + "\n")
        self.run(["rclone", "copy", "-q", "--files-from", listing, self.data, "G:src"])
        self.bytes = sum(os.path.getsize(os.path.join(self.data, p)) for p in self.walk_files())
        return changed

    def walk_files(self):
        for base, _, names in os.walk(self.data):
            for name in names:
                yield os.path.relpath(os.path.join(base, name), self.data)

    def list_walk(self, name: str):
        self.timed(name, [LIST_WALK, "src"], self.bytes, self.objects, json_out=True)

    def local_size(self, path: str) -> dict:
        files, total = 0, 0
        for base, _, names in os.walk(path):
            for name in names:
                files += 1
                total += os.path.getsize(os.path.join(base, name))
        return {"objects": files, "bytes": total}

    def main_pass(self):
        a = self.args
        self.run([VISAGE, "repo", "init", "--repo", "s3://repo-bucket/dr"])
        self.visage_snapshot("visage_full", "dr")
        self.results["sizes"]["visage_after_full"] = self.bucket_size("repo-bucket", "dr/")

        changed = self.mutate(a.changed, 1)
        self.results["changed_keys"] = changed
        self.list_walk("list_walk_1")
        incremental = self.visage_snapshot("visage_incremental", "dr")
        self.list_walk("list_walk_2")
        self.results["sizes"]["visage_after_incremental"] = self.bucket_size("repo-bucket", "dr/")

        snapshot_id = incremental["output"]["snapshot"]
        self.timed("visage_restore", [VISAGE, "restore", "bucket", "--repo", "s3://repo-bucket/dr",
                                                "--snapshot", snapshot_id, "--to-bucket", "restore-dst", "--json"],
                             self.bytes, self.objects, json_out=True)
        check = subprocess.run(["rclone", "check", "--one-way", "G:src", "G:restore-dst"], env=self.env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.results["checks"]["rclone_check_src_vs_restore"] = {
            "exit_code": check.returncode, "tail": check.stdout.strip().splitlines()[-4:]}
        self.results["checks"]["restore_dst_listing"] = self.bucket_size("restore-dst")

        # The route people use today: mirror the bucket, then back up the mirror.
        mirror = os.path.join(self.work, "mirror")
        self.timed("rclone_sync_download", ["rclone", "sync", "-q", "G:src", mirror], self.bytes, self.objects)
        self.run(["restic", "-r", self.restic_s3("route"), "init"])
        self.timed("restic_backup_s3", ["restic", "-r", self.restic_s3("route"), "backup", "--quiet",
                                        "--host", "bench", mirror], self.bytes, self.objects)
        self.results["sizes"]["restic_s3"] = self.bucket_size("restic-bucket", "route/")

        restic_local = os.path.join(self.work, "restic-local")
        self.run(["restic", "-r", restic_local, "init"])
        self.timed("restic_backup_local", ["restic", "-r", restic_local, "backup", "--quiet", "--host", "bench",
                                           self.data], self.bytes, self.objects)
        self.results["sizes"]["restic_local"] = self.local_size(restic_local)

        restored = os.path.join(self.work, "restic-restore")
        self.timed("restic_restore", ["restic", "-r", self.restic_s3("route"), "restore", "latest", "--quiet",
                                      "--target", restored], self.bytes, self.objects)
        self.timed("rclone_copy_upload", ["rclone", "copy", "-q", self.data, "G:rclone-dst"],
                   self.bytes, self.objects)
        shutil.rmtree(restored, ignore_errors=True)

    def variations(self):
        """Rerun the visage-dr steps that missed a target once with more parallelism."""
        s = self.results["steps"]
        route = s["rclone_sync_download"]["wall_seconds"] + s["restic_backup_s3"]["wall_seconds"]
        full = s["visage_full"]["wall_seconds"]
        flags = ["--concurrency", str(self.args.var_concurrency), "--uploads", str(self.args.var_uploads)]
        if route / full < FULL_VS_ROUTE or full > s["restic_backup_local"]["wall_seconds"]:
            self.run([VISAGE, "repo", "init", "--repo", "s3://repo-bucket/dr-var"])
            self.visage_snapshot("visage_full_var", "dr-var", flags)
            walk = min(s["list_walk_1"]["wall_seconds"], s["list_walk_2"]["wall_seconds"])
            if s["visage_incremental"]["wall_seconds"] / walk > INCREMENTAL_VS_LIST:
                self.mutate(self.args.changed, 2)
                self.list_walk("list_walk_var")
                self.visage_snapshot("visage_incremental_var", "dr-var", flags)
        if s["visage_restore"]["wall_seconds"] > s["rclone_copy_upload"]["wall_seconds"]:
            # Restore the newest snapshot of the newest repository.
            repo, latest = "dr", s["visage_incremental"]["output"]["snapshot"]
            for name in ("visage_full_var", "visage_incremental_var"):
                if name in s:
                    repo, latest = "dr-var", s[name]["output"]["snapshot"]
            self.timed("visage_restore_var", [VISAGE, "restore", "bucket", "--repo", f"s3://repo-bucket/{repo}",
                                              "--snapshot", latest, "--to-bucket", "restore-dst-var", "--json",
                                              "--concurrency", str(self.args.var_concurrency)],
                       self.bytes, self.objects, json_out=True)

    def count_pass(self):
        """Repeat the writing steps through the counting proxy, untimed."""
        port = free_port()
        counts_file = os.path.join(self.work, "counts.json")
        proxy = subprocess.Popen([sys.executable, os.path.join(BENCH_DIR, "count_proxy.py"), str(port),
                                  str(self.port), counts_file])
        proxy_url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)

            def counted(name, argv):
                with open(counts_file) as f:
                    before = json.load(f)
                self.run(argv, proxy_url)
                with open(counts_file) as f:
                    after = json.load(f)
                delta = {group: {k: v - before[group].get(k, 0) for k, v in after[group].items()
                                 if v - before[group].get(k, 0)} for group in ("methods", "operations")}
                self.results["counts"][name] = delta
                log(f"requests of {name}: {delta['methods']}")

            self.run([VISAGE, "repo", "init", "--repo", "s3://repo-bucket/dr-count"], proxy_url)
            counted("visage_full", [VISAGE, "snapshot", "bucket", "--repo", "s3://repo-bucket/dr-count",
                                    "--bucket", "src", "--json"])
            self.run(["restic", "-r", self.restic_s3("count", proxy_url), "init"], proxy_url)
            counted("restic_backup_s3", ["restic", "-r", self.restic_s3("count", proxy_url), "backup", "--quiet",
                                         "--host", "bench", os.path.join(self.work, "mirror")])
            counted("rclone_copy_upload", ["rclone", "copy", "-q", self.data, "G:rclone-dst-count"])
            snapshot_id = self.results["steps"]["visage_incremental"]["output"]["snapshot"]
            counted("visage_restore", [VISAGE, "restore", "bucket", "--repo", "s3://repo-bucket/dr",
                                       "--snapshot", snapshot_id, "--to-bucket", "restore-dst-count", "--json"])
        finally:
            proxy.terminate()
            proxy.wait()


STEP_LABELS = [
    ("visage_full", "1. visage-dr full snapshot (S3 to S3 repo)"),
    ("visage_full_var", "1b. visage-dr full snapshot, variation"),
    ("visage_incremental", "2. visage-dr incremental snapshot, 1% changed"),
    ("visage_incremental_var", "2b. visage-dr incremental snapshot, variation"),
    ("visage_restore", "3. visage-dr restore into a new bucket"),
    ("visage_restore_var", "3b. visage-dr restore, variation"),
    ("rclone_sync_download", "4a. rclone sync bucket to local disk"),
    ("restic_backup_s3", "4b. restic backup of the mirror to S3 repo"),
    ("restic_backup_local", "5. restic backup from local disk (local repo)"),
    ("restic_restore", "6. restic restore from S3 repo to disk"),
    ("rclone_copy_upload", "7. rclone copy local disk to a new bucket"),
    ("list_walk_1", "8. ListObjectsV2 walk (before step 2)"),
    ("list_walk_2", "8. ListObjectsV2 walk (after step 2)"),
    ("list_walk_var", "8. ListObjectsV2 walk (before step 2b)"),
]


def put_requests(results: dict, name: str) -> str:
    """Return the PUT figure of a step and where it comes from."""
    step = results["steps"].get(name, {})
    counted = results.get("counts", {}).get(name)
    parts = []
    if "output" in step and "repository_puts" in step["output"]:
        parts.append(f"{step['output']['repository_puts']} (own stats)")
    if counted is not None:
        methods = counted["methods"]
        parts.append(f"{methods.get('PUT', 0)} PUT + {methods.get('POST', 0)} POST (proxy)")
    return ", ".join(parts) or "-"


def repo_size(results: dict, name: str) -> str:
    sizes = results.get("sizes", {})
    key = {"visage_full": "visage_after_full", "visage_incremental": "visage_after_incremental",
           "restic_backup_s3": "restic_s3", "restic_backup_local": "restic_local"}.get(name)
    if key not in sizes:
        return "-"
    return f"{sizes[key]['bytes'] / 1e6:.1f} MB in {sizes[key]['objects']} objects"


def verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def report(results: dict) -> str:
    """Return a Markdown table of the steps and a list of the targets."""
    s = results["steps"]
    lines = [
        "| step | wall s | MB/s | objects/s | peak RSS MiB | client CPU s | Garage CPU s | PUT requests | repository size |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for name, label in STEP_LABELS:
        if name not in s:
            continue
        st = s[name]
        lines.append(f"| {label} | {st['wall_seconds']:.2f} | {st['mb_per_second']:.1f} | "
                     f"{st['objects_per_second']:.0f} | {st['peak_rss_mib']:.0f} | {st['client_cpu_seconds']:.1f} | "
                     f"{st['garage_cpu_seconds']:.1f} | {put_requests(results, name)} | {repo_size(results, name)} |")
    if "rclone_sync_download" in s and "restic_backup_s3" in s:
        a, b = s["rclone_sync_download"], s["restic_backup_s3"]
        wall = a["wall_seconds"] + b["wall_seconds"]
        ds = results["dataset"]
        lines.append(f"| 4. rclone sync + restic backup (sum) | {wall:.2f} | {ds['bytes'] / 1e6 / wall:.1f} | "
                     f"{ds['objects'] / wall:.0f} | {max(a['peak_rss_mib'], b['peak_rss_mib']):.0f} (max) | "
                     f"{a['client_cpu_seconds'] + b['client_cpu_seconds']:.1f} | "
                     f"{a['garage_cpu_seconds'] + b['garage_cpu_seconds']:.1f} | | |")

    lines += ["", "| target | figure | ratio | result |", "| --- | --- | ---: | --- |"]

    def best(*names):
        walls = [(s[n]["wall_seconds"], n) for n in names if n in s]
        return min(walls)

    full, full_name = best("visage_full", "visage_full_var")
    route = s["rclone_sync_download"]["wall_seconds"] + s["restic_backup_s3"]["wall_seconds"]
    local = s["restic_backup_local"]["wall_seconds"]
    incremental, incremental_name = best("visage_incremental", "visage_incremental_var")
    walk = min(s[n]["wall_seconds"] for n in ("list_walk_1", "list_walk_2", "list_walk_var") if n in s)
    restore, restore_name = best("visage_restore", "visage_restore_var")
    copy = s["rclone_copy_upload"]["wall_seconds"]
    rss = max(st["peak_rss_mib"] for n, st in s.items() if n.startswith("visage_") and not n.endswith("_var"))
    rss_var = [st["peak_rss_mib"] for n, st in s.items() if n.startswith("visage_") and n.endswith("_var")]
    puts = s["visage_full"]["output"]["repository_puts"]
    restic_puts = results.get("counts", {}).get("restic_backup_s3", {}).get("methods", {}).get("PUT")
    objects = results["dataset"]["objects"]
    lines += [
        f"| full snapshot >= {FULL_VS_ROUTE:g}x faster than rclone sync + restic backup | {full:.2f} s ({full_name}) "
        f"vs {route:.2f} s | {route / full:.2f}x | {verdict(route / full >= FULL_VS_ROUTE)} |",
        f"| full snapshot no slower than restic from local disk | {full:.2f} s vs {local:.2f} s | "
        f"{local / full:.2f}x | {verdict(full <= local)} |",
        f"| incremental (1% changed) <= {INCREMENTAL_VS_LIST:g}x the ListObjectsV2 walk | {incremental:.2f} s "
        f"({incremental_name}) vs {walk:.2f} s | {incremental / walk:.2f}x | "
        f"{verdict(incremental / walk <= INCREMENTAL_VS_LIST)} |",
        f"| restore into a new bucket no slower than rclone copy from disk | {restore:.2f} s ({restore_name}) vs "
        f"{copy:.2f} s | {copy / restore:.2f}x | {verdict(restore <= copy)} |",
        f"| peak RSS of visage-dr < {RSS_LIMIT_MIB} MiB, default flags | {rss:.0f} MiB (max of steps 1-3) | "
        f"{rss / RSS_LIMIT_MIB:.2f} | {verdict(rss < RSS_LIMIT_MIB)} |",
    ]
    if rss_var:
        lines.append(f"| peak RSS of visage-dr < {RSS_LIMIT_MIB} MiB, variation flags | {max(rss_var):.0f} MiB "
                     f"(max of steps 1b-3b) | {max(rss_var) / RSS_LIMIT_MIB:.2f} | "
                     f"{verdict(max(rss_var) < RSS_LIMIT_MIB)} |")
    lines += [
        f"| full snapshot PUTs far below one per object | {puts} for {objects} objects"
        + (f"; restic {restic_puts}" if restic_puts is not None else "") + f" | {puts / objects:.3f} per object | "
        f"{verdict(puts * 10 < objects)} |",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", metavar="RESULTS", help="only print the table of an earlier results file")
    parser.add_argument("--work", help="scratch directory (data set, mirrors, restic repos)")
    parser.add_argument("--results", help="JSON file to write")
    parser.add_argument("--seed", type=int, default=20260115)
    parser.add_argument("--dataset-args", default="", help="extra make_dataset.py flags, for a smoke test")
    parser.add_argument("--changed", type=int, default=33, help="objects rewritten before the incremental run")
    parser.add_argument("--var-concurrency", type=int, default=16)
    parser.add_argument("--var-uploads", type=int, default=8)
    parser.add_argument("--skip-counts", action="store_true", help="skip the untimed request-counting pass")
    args = parser.parse_args()
    if args.report:
        with open(args.report) as f:
            print(report(json.load(f)))
        return 0
    if not args.work or not args.results:
        parser.error("--work and --results are required unless --report is given")

    bench = Bench(args)
    bench.results["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        bench.prepare()
        bench.main_pass()
        bench.variations()
        if not args.skip_counts:
            bench.count_pass()
    finally:
        with open(args.results, "w") as f:
            json.dump(bench.results, f, indent=1)
        log(f"results written to {args.results}")
    print(report(bench.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
