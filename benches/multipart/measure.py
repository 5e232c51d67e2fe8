"""Server CPU per GiB: boto3 upload_file (multipart, default TransferConfig) vs a
single-part curl PUT of the same file; and the CompleteMultipartUpload time for 64 and
1,000 parts. Driven by run.sh, which starts the server; see README.md."""
import os, statistics, subprocess, sys, time
import boto3
from botocore.config import Config
from boto3.s3.transfer import TransferConfig

port, lab, pid, data, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
GiB, MiB = 1 << 30, 1 << 20
part = int(sys.argv[6]) * MiB if len(sys.argv) > 6 else 8 * MiB
TCK = os.sysconf("SC_CLK_TCK")
ep = f"https://127.0.0.1:{port}"
ca, cert, key = f"{lab}/ca.crt", f"{lab}/alice.crt", f"{lab}/alice.key"

def cpu():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TCK   # utime + stime, all threads

s3 = boto3.client("s3", endpoint_url=ep, verify=ca, region_name="us-east-1",
                  aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="x",
                  config=Config(s3={"addressing_style": "path"}, client_cert=(cert, key)))
src = f"{data}/src.bin"
size = os.path.getsize(src)

def once(f, i):
    c0, t0 = cpu(), time.monotonic()
    f(i)
    time.sleep(0.3)          # let the server finish its bookkeeping
    return (cpu() - c0) / (size / GiB), time.monotonic() - t0 - 0.3

def boto(i):
    s3.upload_file(src, "datasets", f"boto-{i}.bin",
                   Config=TransferConfig(multipart_threshold=part, multipart_chunksize=part))
    s3.delete_object(Bucket="datasets", Key=f"boto-{i}.bin")

def curl(i):
    subprocess.run(["taskset", "-c", "1", "curl", "-sS", "-f", "-o", "/dev/null", "--cacert", ca, "--cert", cert,
                    "--key", key, "-T", src, f"{ep}/datasets/curl-{i}.bin"], check=True)
    s3.delete_object(Bucket="datasets", Key=f"curl-{i}.bin")

# Interleaved, so drift on a shared machine hits both alike.
res = {f"boto3 upload_file, multipart {part // MiB} MiB parts ({-(-size // part)} parts)": [],
       "curl -T, single-part PUT": []}
for i in range(runs):
    for (name, out), f in zip(res.items(), (boto, curl)):
        out.append(once(f, i))
for name, out in res.items():
    cs = [c for c, _ in out]
    print(f"{name}: server CPU-s/GiB median {statistics.median(cs):.3f} (runs {', '.join(f'{c:.3f}' for c in cs)}); "
          f"wall s median {statistics.median([w for _, w in out]):.2f}", flush=True)

def complete_time(parts, part_size):
    u = s3.create_multipart_upload(Bucket="datasets", Key=f"mp-{parts}.bin")["UploadId"]
    body = os.urandom(part_size)
    done = [{"PartNumber": n, "ETag": s3.upload_part(Bucket="datasets", Key=f"mp-{parts}.bin", UploadId=u,
                                                     PartNumber=n, Body=body)["ETag"]} for n in range(1, parts + 1)]
    c0, t0 = cpu(), time.monotonic()
    s3.complete_multipart_upload(Bucket="datasets", Key=f"mp-{parts}.bin", UploadId=u,
                                 MultipartUpload={"Parts": done})
    t1, c1 = time.monotonic(), cpu()
    s3.delete_object(Bucket="datasets", Key=f"mp-{parts}.bin")
    return t1 - t0, c1 - c0

for parts, ps in ((64, 8 * MiB), (1000, 5 * MiB)):
    ts = [complete_time(parts, ps) for _ in range(runs)]
    print(f"CompleteMultipartUpload of {parts} parts x {ps // MiB} MiB ({parts * ps / GiB:.2f} GiB): "
          f"wall s median {statistics.median([t for t, _ in ts]):.3f} (runs {', '.join(f'{t:.3f}' for t, _ in ts)}); "
          f"server CPU-s median {statistics.median([c for _, c in ts]):.2f}", flush=True)
