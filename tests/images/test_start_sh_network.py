"""We test agent-images/linux/start.sh's proxy and private CA inputs against the fake agent: the config.sh
options they become (--proxyurl, --proxyusername, --proxypassword, --sslcacert), the .proxybypass file, the
files that travel to the run container, and bad values reported by name."""

from __future__ import annotations

import subprocess

from image_support import Sandbox, registration_env, run_start_sh

PROXY = "http://proxy.example.com:3128"


def register(box: Sandbox, **extra: str) -> subprocess.CompletedProcess[str]:
    result = run_start_sh("register", {**registration_env(box), **extra})
    assert result.returncode == 0, result.stderr
    return result


def option_values(args: list[str], option: str) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args) if arg == option]


def test_proxy_and_ca_reach_config_sh(sandbox: Sandbox) -> None:
    """We test: the proxy URL, its credentials and the CA file become config.sh options, the bypass list the
    agent's .proxybypass (one regular expression a line, blanks trimmed), and .proxybypass travels to the state dir."""
    ca = sandbox.root / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    register(
        sandbox,
        AZP_PROXY_URL=PROXY,
        AZP_PROXY_USERNAME="svc-proxy",
        AZP_PROXY_PASSWORD="hunter2",
        AZP_PROXY_BYPASS=r"https://tfs\.example\.com/.*, , .*\.svc\.cluster\.local ",
        AZP_CA_CERT_FILE=str(ca),
    )
    args = sandbox.recorded("config.args").splitlines()
    assert option_values(args, "--proxyurl") == [PROXY]
    assert option_values(args, "--proxyusername") == ["svc-proxy"]
    assert option_values(args, "--proxypassword") == ["hunter2"]
    assert option_values(args, "--sslcacert") == [str(ca)]
    bypass = (sandbox.agent / ".proxybypass").read_text().splitlines()
    assert bypass == [r"https://tfs\.example\.com/.*", r".*\.svc\.cluster\.local"]
    assert (sandbox.state / ".proxybypass").read_text().splitlines() == bypass


def test_no_proxy_or_ca_adds_no_option(sandbox: Sandbox) -> None:
    """We test: without the variables config.sh gets none of the options and no .proxybypass is written."""
    register(sandbox)
    args = sandbox.recorded("config.args").splitlines()
    assert not {"--proxyurl", "--proxyusername", "--proxypassword", "--sslcacert"} & set(args)
    assert not (sandbox.agent / ".proxybypass").exists()


def test_bad_proxy_url_or_missing_ca_file_exit_2_naming_the_variable(sandbox: Sandbox) -> None:
    """We test: a proxy URL that is not http(s) and a CA file that is not there are refused by name (exit 2)."""
    bad_url = run_start_sh("register", {**registration_env(sandbox), "AZP_PROXY_URL": "proxy:3128"})
    assert bad_url.returncode == 2 and "AZP_PROXY_URL" in bad_url.stderr
    missing = run_start_sh("register", {**registration_env(sandbox), "AZP_CA_CERT_FILE": "/nonexistent/ca.crt"})
    assert missing.returncode == 2 and "AZP_CA_CERT_FILE" in missing.stderr
