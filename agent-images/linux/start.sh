#!/usr/bin/env bash
# Entrypoint of the azp-agents Linux agent image: one agent, one job, and the PAT never reaches the
# process that runs pipeline steps.
#
#   start.sh register  init container: configure the agent with the PAT and save its identity files
#                      (.agent, .credentials, .credentials_rsaparams, and .env/.path/.capabilities if
#                      present) to AZP_STATE_DIR, the emptyDir shared with the main container; then
#                      write `azp-agents.dev/agent-id=<id>` to its termination message, so the
#                      reconciler learns the agent's id from the pod list, without listing agents.
#   start.sh run       main container: refuse to start if any token is visible, restore the identity
#                      files, run `run.sh --once`, forward SIGTERM/SIGINT, exit with the agent's status.
#   start.sh once      single container: configure in place, re-exec itself without any token variable,
#                      then run the agent as `run` does.
#
# Inputs: AZP_URL (required), AZP_POOL (Default), AZP_AGENT_NAME (the hostname, i.e. the pod name),
# AZP_WORK (/azp/_work), AZP_TOKEN_FILE (preferred) or AZP_TOKEN (compatibility, warns),
# AZP_STATE_DIR (/azp/state), AZP_AGENT_DIR (/azp/agent), AZP_SECRET_DIR (/var/run/secrets/azp: where
# `run` looks for a token mounted by mistake), AZP_DISABLE_LOG_UPLOADS (false), AZP_TERMINATION_LOG
# (/dev/termination-log, the container's terminationMessagePath).
# Proxies and private CAs (azure-pipelines-agent docs/start/proxyconfig.md and certificate.md):
# AZP_PROXY_URL, AZP_PROXY_USERNAME, AZP_PROXY_PASSWORD -> config.sh --proxyurl/--proxyusername/--proxypassword;
# AZP_PROXY_BYPASS (comma-separated regular expressions of URLs) -> the agent's .proxybypass file, one a line;
# AZP_CA_CERT_FILE (a PEM file) -> config.sh --sslcacert. The files config.sh writes for them (.proxy,
# .proxycredentials, .proxybypass, .certificates) travel to the run container with the identity.
# AZP_AGENT_FILES: a directory holding .agent, .credentials and .credentials_rsaparams of an agent the
# reconciler registered (agents.registration: reconciler; a Secret owned by the Job). With it no mode runs
# config.sh or needs a PAT: register copies the files to AZP_STATE_DIR, once and run into the agent directory,
# and the agent authenticates with its own key (the OAuth credential those files describe).
# Exit status: the agent's own; 2 for a missing or invalid input, named in the message.
set -euo pipefail
umask 077

readonly PROG="start.sh"
readonly IDENTITY_FILES=(.agent .credentials .credentials_rsaparams)
readonly OPTIONAL_FILES=(.env .path .capabilities .proxy .proxycredentials .proxybypass .certificates)
# Every name a token can travel under: never handed to the agent, never published as a capability.
readonly TOKEN_VARS=(AZP_TOKEN AZP_TOKEN_FILE VSTS_AGENT_INPUT_TOKEN)

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }

# Missing or invalid input: exit 2, like the reconciler does for bad configuration.
usage_error() {
  log "$*"
  exit 2
}

load_settings() {
  AZP_AGENT_DIR="${AZP_AGENT_DIR:-/azp/agent}"
  AZP_STATE_DIR="${AZP_STATE_DIR:-/azp/state}"
  AZP_WORK="${AZP_WORK:-/azp/_work}"
  AZP_POOL="${AZP_POOL:-Default}"
  AZP_AGENT_NAME="${AZP_AGENT_NAME:-${HOSTNAME:-}}"
  AZP_SECRET_DIR="${AZP_SECRET_DIR:-/var/run/secrets/azp}"
  AZP_DISABLE_LOG_UPLOADS="${AZP_DISABLE_LOG_UPLOADS:-false}"
  AZP_TERMINATION_LOG="${AZP_TERMINATION_LOG:-/dev/termination-log}"
}

require_agent_script() {
  local script="$1"
  if [[ ! -x "$AZP_AGENT_DIR/$script" ]]; then
    usage_error "AZP_AGENT_DIR=$AZP_AGENT_DIR has no executable $script (is the agent installed there?)"
  fi
}

validate_registration_inputs() {
  if [[ -z "${AZP_URL:-}" ]]; then
    usage_error "AZP_URL is required (the organization URL, e.g. https://dev.azure.com/contoso)"
  fi
  if [[ ! "$AZP_URL" =~ ^https?://[^[:space:]/]+(/[^[:space:]]*)?$ ]]; then
    usage_error "AZP_URL must be an http(s) URL such as https://dev.azure.com/contoso, got '$AZP_URL'"
  fi
  if [[ -z "$AZP_AGENT_NAME" || "$AZP_AGENT_NAME" =~ [[:space:]] ]]; then
    usage_error "AZP_AGENT_NAME must be a non-empty name without spaces (default: the hostname), got '$AZP_AGENT_NAME'"
  fi
  if [[ "$AZP_POOL" =~ ^[[:space:]]*$ ]]; then
    usage_error "AZP_POOL must name an agent pool (default: Default)"
  fi
  case "$AZP_DISABLE_LOG_UPLOADS" in
    true | false) ;;
    *) usage_error "AZP_DISABLE_LOG_UPLOADS must be true or false, got '$AZP_DISABLE_LOG_UPLOADS'" ;;
  esac
  if [[ -n "${AZP_CA_CERT_FILE:-}" && ! -r "$AZP_CA_CERT_FILE" ]]; then
    usage_error "AZP_CA_CERT_FILE=$AZP_CA_CERT_FILE is not a readable file (mount the CA bundle there)"
  fi
  if [[ -n "${AZP_PROXY_URL:-}" && ! "$AZP_PROXY_URL" =~ ^https?://[^[:space:]]+$ ]]; then
    usage_error "AZP_PROXY_URL must be an http(s) URL such as http://proxy.example.com:3128, got '$AZP_PROXY_URL'"
  fi
  require_agent_script config.sh
}

# Adds the proxy and CA options of config.sh to `args` (the caller's array) and writes .proxybypass.
add_network_args() {
  if [[ -n "${AZP_PROXY_URL:-}" ]]; then
    args+=(--proxyurl "$AZP_PROXY_URL")
    if [[ -n "${AZP_PROXY_USERNAME:-}" ]]; then
      args+=(--proxyusername "$AZP_PROXY_USERNAME" --proxypassword "${AZP_PROXY_PASSWORD:-}")
    fi
    if [[ -n "${AZP_PROXY_BYPASS:-}" ]]; then
      tr ',' '\n' <<<"$AZP_PROXY_BYPASS" | sed 's/^[[:space:]]*//; s/[[:space:]]*$//; /^$/d' >"$AZP_AGENT_DIR/.proxybypass"
    fi
  fi
  if [[ -n "${AZP_CA_CERT_FILE:-}" ]]; then
    args+=(--sslcacert "$AZP_CA_CERT_FILE")
  fi
}

# Sets `token` (global, unset again after configuration) from AZP_TOKEN_FILE or, failing that, AZP_TOKEN.
read_token() {
  if [[ -n "${AZP_TOKEN_FILE:-}" ]]; then
    if [[ ! -f "$AZP_TOKEN_FILE" || ! -r "$AZP_TOKEN_FILE" ]]; then
      usage_error "AZP_TOKEN_FILE=$AZP_TOKEN_FILE is not a readable file (mount the Secret holding the PAT there)"
    fi
    token="$(<"$AZP_TOKEN_FILE")"
    if [[ -n "${AZP_TOKEN:-}" ]]; then
      log "warning: both AZP_TOKEN_FILE and AZP_TOKEN are set; using AZP_TOKEN_FILE"
    fi
  elif [[ -n "${AZP_TOKEN:-}" ]]; then
    log "warning: AZP_TOKEN puts the PAT in the environment; mount it as a file and set AZP_TOKEN_FILE instead"
    token="$AZP_TOKEN"
  else
    usage_error "AZP_TOKEN_FILE is required (the mounted Secret file holding the PAT; AZP_TOKEN is accepted for compatibility)"
  fi
  # Secrets edited by hand often end in a newline; a PAT never contains whitespace.
  token="${token//[[:space:]]/}"
  if [[ -z "$token" ]]; then
    usage_error "the PAT read from ${AZP_TOKEN_FILE:-AZP_TOKEN} is empty"
  fi
}

configure_agent() {
  local ignore
  ignore="$(IFS=,; printf '%s' "${TOKEN_VARS[*]}")"
  export VSO_AGENT_IGNORE="${VSO_AGENT_IGNORE:+$VSO_AGENT_IGNORE,}$ignore"

  local args=(--unattended --url "$AZP_URL" --auth pat --token "$token" --pool "$AZP_POOL"
    --agent "$AZP_AGENT_NAME" --work "$AZP_WORK" --replace --acceptTeeEula)
  # Off by default: with it, job logs stay inside a pod that is deleted after the job.
  if [[ "$AZP_DISABLE_LOG_UPLOADS" == true ]]; then
    args+=(--disableloguploads)
  fi
  add_network_args

  log "configuring agent '$AZP_AGENT_NAME' in pool '$AZP_POOL' of $AZP_URL"
  local status=0
  (cd "$AZP_AGENT_DIR" && env -u AZP_TOKEN -u VSTS_AGENT_INPUT_TOKEN ./config.sh "${args[@]}") || status=$?
  unset token
  if ((status != 0)); then
    log "config.sh failed with exit code $status: check AZP_URL, AZP_POOL and that the PAT has the scope Agent Pools (Read & manage)"
    exit "$status"
  fi
  local name
  for name in "${IDENTITY_FILES[@]}"; do
    if [[ ! -f "$AZP_AGENT_DIR/$name" ]]; then
      log "config.sh reported success but wrote no $name in $AZP_AGENT_DIR"
      exit 1
    fi
  done
}

# Copies the named files that exist from one directory to another, readable by the agent user only.
copy_agent_files() {
  local from="$1" to="$2" name
  shift 2
  for name in "$@"; do
    if [[ -f "$from/$name" ]]; then
      install -m 600 "$from/$name" "$to/$name"
    fi
  done
}

# Copies the files of an agent the reconciler registered into the agent directory (no config.sh, no PAT).
install_agent_files() {
  local name
  for name in "${IDENTITY_FILES[@]}"; do
    if [[ ! -f "$AZP_AGENT_FILES/$name" || ! -r "$AZP_AGENT_FILES/$name" ]]; then
      usage_error "AZP_AGENT_FILES=$AZP_AGENT_FILES has no readable $name (mount the agent's Secret there)"
    fi
  done
  copy_agent_files "$AZP_AGENT_FILES" "$AZP_AGENT_DIR" "${IDENTITY_FILES[@]}"
  log "agent files of '$(agent_name_of_files)' installed from $AZP_AGENT_FILES: no registration needed"
}

agent_name_of_files() {
  sed -n 's/.*"[Aa]gent[Nn]ame"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$AZP_AGENT_DIR/.agent" | head -n 1 || true
}

save_state() {
  if ! mkdir -p "$AZP_STATE_DIR" 2>/dev/null || [[ ! -w "$AZP_STATE_DIR" ]]; then
    usage_error "AZP_STATE_DIR=$AZP_STATE_DIR is not a writable directory (mount the emptyDir shared with the run container there)"
  fi
  copy_agent_files "$AZP_AGENT_DIR" "$AZP_STATE_DIR" "${IDENTITY_FILES[@]}" "${OPTIONAL_FILES[@]}"
  log "agent '$AZP_AGENT_NAME' registered; its identity is in $AZP_STATE_DIR for the run container"
}

# The agent's id, as config.sh saved it in .agent ("agentId": 123), to the termination message of this
# init container. Kubernetes shows it in the pod's status, which the reconciler lists anyway: it can
# then deregister the agent once its pod finishes without listing the pool's agents. Pipeline steps
# run later, in another container, and cannot change it. Best effort: registration stands without it.
publish_agent_id() {
  local id
  id="$(sed -n 's/.*"[Aa]gent[Ii]d"[[:space:]]*:[[:space:]]*\([0-9][0-9]*\).*/\1/p' "$AZP_AGENT_DIR/.agent" | head -n 1 || true)"
  if [[ -z "$id" ]]; then
    log "no agentId in $AZP_AGENT_DIR/.agent: the reconciler will find the agent by listing the pool"
    return 0
  fi
  if ! printf 'azp-agents.dev/agent-id=%s\n' "$id" 2>/dev/null >"$AZP_TERMINATION_LOG"; then
    log "could not write $AZP_TERMINATION_LOG: the reconciler will find agent $id by listing the pool"
  fi
}

refuse_token_variables() {
  local name
  for name in "${TOKEN_VARS[@]}"; do
    if [[ -n "${!name+set}" ]]; then
      usage_error "$name is set in the run container: only the register init container may see the PAT; remove it from this container"
    fi
  done
}

refuse_tokens() {
  refuse_token_variables
  if [[ -r "$AZP_SECRET_DIR/token" ]]; then
    usage_error "a token is readable at $AZP_SECRET_DIR/token (AZP_SECRET_DIR): mount the PAT Secret only in the register init container"
  fi
}

restore_state() {
  local name
  for name in "${IDENTITY_FILES[@]}"; do
    if [[ ! -f "$AZP_STATE_DIR/$name" ]]; then
      usage_error "AZP_STATE_DIR=$AZP_STATE_DIR has no $name: run 'start.sh register' in an init container sharing that directory first"
    fi
  done
  copy_agent_files "$AZP_STATE_DIR" "$AZP_AGENT_DIR" "${IDENTITY_FILES[@]}" "${OPTIONAL_FILES[@]}"
}

# Set by the trap so the wait loop knows a signal, not the agent's exit, ended `wait`.
signal_forwarded=""
agent_pgid=""

forward_signal() {
  local signal="$1"
  signal_forwarded="$signal"
  if [[ -z "$agent_pgid" ]]; then
    return
  fi
  log "received SIG$signal: passing it on to the agent"
  # run.sh runs the listener in the foreground without traps, so the whole group must get the signal.
  kill -s "$signal" -- "-$agent_pgid" 2>/dev/null || kill -s "$signal" "$agent_pgid" 2>/dev/null || true
}

run_agent() {
  require_agent_script run.sh
  trap 'forward_signal TERM' TERM
  trap 'forward_signal INT' INT

  log "starting agent '$AZP_AGENT_NAME' for one job"
  # Job control puts the agent in its own process group, which forward_signal targets as a whole.
  set -m
  (cd "$AZP_AGENT_DIR" && exec ./run.sh --once) &
  agent_pgid=$!
  set +m
  # A signal that arrived before the agent existed still has to reach it.
  if [[ -n "$signal_forwarded" ]]; then
    forward_signal "$signal_forwarded"
  fi

  local status=0 last_status=""
  while true; do
    signal_forwarded=""
    status=0
    wait "$agent_pgid" || status=$?
    # A trapped signal interrupts `wait` (status > 128) while the agent is still shutting down: wait again.
    if [[ -n "$signal_forwarded" ]]; then
      last_status="$status"
      continue
    fi
    # 127: the agent had already been reaped by the interrupted wait, whose status is the one to keep.
    if ((status == 127)) && [[ -n "$last_status" ]]; then
      status="$last_status"
    fi
    break
  done
  # Let listener processes that outlived run.sh finish their shutdown (the listener allows itself 30 s)
  # before the container stops; bounded, because an unreaped zombie would keep the group alive forever.
  local polls=0
  while kill -0 -- "-$agent_pgid" 2>/dev/null && ((polls < 175)); do
    sleep 0.2
    polls=$((polls + 1))
  done
  log "agent exited with status $status"
  exit "$status"
}

main() {
  local mode="${1:-}"
  load_settings
  case "$mode" in
    register)
      if [[ -n "${AZP_AGENT_FILES:-}" ]]; then
        refuse_token_variables
        install_agent_files
      else
        validate_registration_inputs
        read_token
        configure_agent
      fi
      save_state
      publish_agent_id
      ;;
    run)
      refuse_tokens
      if [[ -n "${AZP_AGENT_FILES:-}" ]]; then
        install_agent_files
      else
        restore_state
      fi
      run_agent
      ;;
    once)
      if [[ -n "${AZP_AGENT_FILES:-}" ]]; then
        refuse_token_variables
        install_agent_files
        run_agent
      fi
      validate_registration_inputs
      read_token
      configure_agent
      # Start afresh without the token variables: `unset` would leave them in this process's initial
      # environment, which the kernel keeps readable in /proc/<pid>/environ for as long as the job runs.
      exec env -u AZP_TOKEN -u AZP_TOKEN_FILE -u VSTS_AGENT_INPUT_TOKEN "${BASH:-bash}" "${BASH_SOURCE[0]}" configured
      ;;
    configured)
      # Second half of `once` (internal): the agent is configured in place and the Secret stays mounted.
      refuse_token_variables
      run_agent
      ;;
    *)
      usage_error "unknown mode '${mode}': use register (init container), run (main container) or once (single container)"
      ;;
  esac
}

main "$@"
