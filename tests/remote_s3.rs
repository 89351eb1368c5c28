//! `s3://` archives against a real S3 protocol server that checks signatures (issue 14):
//! moto's standalone server, with an IAM user and access key created for the test and
//! authentication turned on through its `reset-auth` endpoint. Streams are byte-exact (thin
//! chain and encrypted included); a wrong secret is a clear 403; an unknown bucket or key, a
//! clear 404. Skips (with a message) without `moto_server`, fails under
//! `HEXZD_REQUIRE_TOOLS=1`.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod common;
mod remote_support;

use std::process::Command;

use common::{FIXTURE_PASSWORD, FIXTURES, assert_clean_failure, hexzd, run};
use hexzd::format::Stream;
use remote_support::{Moto, fixtures};

const BUCKET: &str = "hexzd-test";

/// Creates the bucket, uploads every fixture archive, creates an IAM user with an access key
/// allowed `s3:*`, then turns authentication on. Returns (key id, secret).
const SETUP: &str = r#"
import json, os, sys, urllib.request
import boto3
ep = os.environ["ENDPOINT"]
kw = dict(endpoint_url=ep, region_name="us-east-1",
          aws_access_key_id="setup", aws_secret_access_key="setup")
s3 = boto3.client("s3", **kw)
s3.create_bucket(Bucket=os.environ["BUCKET"])
for name in sys.argv[1:]:
    with open(os.path.join(os.environ["FIXTURES"], name), "rb") as f:
        s3.put_object(Bucket=os.environ["BUCKET"], Key="snaps/" + name, Body=f.read())
iam = boto3.client("iam", **kw)
iam.create_user(UserName="hexzd")
iam.put_user_policy(UserName="hexzd", PolicyName="read", PolicyDocument=json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
key = iam.create_access_key(UserName="hexzd")["AccessKey"]
urllib.request.urlopen(urllib.request.Request(ep + "/moto-api/reset-auth", data=b"0", method="POST",
                                              headers={"Content-Type": "application/json"}))
print(key["AccessKeyId"], key["SecretAccessKey"])
"#;

fn python() -> Option<&'static str> {
    ["python3", "python"].into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import boto3"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn s3_archives_read_byte_exact_with_signed_requests_and_fail_clearly_otherwise() {
    let Some(moto) = Moto::start() else {
        return;
    };
    let py = python().expect("moto_server is installed but boto3 does not import");
    let names: Vec<&str> = FIXTURES.iter().map(|f| f.archive).collect();
    let out = Command::new(py)
        .args(["-c", SETUP])
        .args(&names)
        .env("ENDPOINT", moto.endpoint())
        .env("BUCKET", BUCKET)
        .env("FIXTURES", fixtures())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (key, secret) = text.trim().split_once(' ').unwrap();

    let cat = |url: &str, key: &str, secret: &str, password: bool, stream: &str| {
        let mut cmd = hexzd();
        cmd.args(["cat", "--stream", stream, url])
            .env("AWS_ENDPOINT_URL", moto.endpoint())
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", key)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE");
        if password {
            cmd.env("HEXZ_PASSWORD", FIXTURE_PASSWORD);
        }
        run(&mut cmd)
    };
    for f in FIXTURES {
        let url = format!("s3://{BUCKET}/snaps/{}", f.archive);
        for (stream, arg) in [(Stream::Main, "main"), (Stream::Aux, "aux")] {
            let o = cat(&url, key, secret, f.encrypted, arg);
            assert!(
                o.status.success(),
                "{url}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(o.stdout == f.expected(stream), "{url} {arg} differs");
        }
    }

    let url = format!("s3://{BUCKET}/snaps/mixed-lz4.hxz");
    let o = cat(&url, key, "not-the-secret", false, "main");
    let err = assert_clean_failure(&o, "wrong secret");
    assert!(err.contains("403") && err.contains(&url), "{err}");
    assert!(!err.contains("not-the-secret"), "{err}");

    let o = cat(
        &format!("s3://{BUCKET}/snaps/nope.hxz"),
        key,
        secret,
        false,
        "main",
    );
    let err = assert_clean_failure(&o, "unknown key");
    assert!(err.contains("404") && err.contains("NoSuchKey"), "{err}");
    let o = cat("s3://no-such-bucket/x.hxz", key, secret, false, "main");
    let err = assert_clean_failure(&o, "unknown bucket");
    assert!(err.contains("404") && err.contains("NoSuchBucket"), "{err}");
    let _ = fixtures;
}
