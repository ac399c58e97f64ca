#Requires -Version 5.1
<#
.SYNOPSIS
Entrypoint of the azp-agents Windows agent image, parallel to agent-images/linux/start.sh.

.DESCRIPTION
  start.ps1 once      (default) configure in place, drop every token variable, run the agent for one job.
  start.ps1 register  init container: configure and save the identity files to AZP_STATE_DIR.
  start.ps1 run       main container: refuse any token, restore the identity files, run the agent once.

On Windows the agent's private key (.credentials_rsaparams) is encrypted with DPAPI in LocalMachine
scope, so whether `run` can decrypt a key that `register` wrote in another container is unconfirmed:
`once` in a single container is the default here (see agent-images/README.md).

Inputs are the same as start.sh: AZP_URL (required), AZP_POOL (Default), AZP_AGENT_NAME (computer name),
AZP_WORK (C:\azp\_work), AZP_TOKEN_FILE (preferred) or AZP_TOKEN (compatibility), AZP_STATE_DIR
(C:\azp\state), AZP_AGENT_DIR (C:\azp\agent), AZP_SECRET_DIR (C:\var\run\secrets\azp),
AZP_DISABLE_LOG_UPLOADS (false), AZP_TERMINATION_LOG (/dev/termination-log: `register` writes the
agent's id there, as start.sh does). Proxies and private CAs as in start.sh: AZP_PROXY_URL,
AZP_PROXY_USERNAME, AZP_PROXY_PASSWORD (config.cmd --proxyurl, --proxyusername, --proxypassword),
AZP_PROXY_BYPASS (comma-separated regular expressions, written to .proxybypass) and AZP_CA_CERT_FILE
(--sslcacert). Exit status: the agent's own; 2 for a missing or invalid input.

AZP_AGENT_FILES: a directory holding .agent, .credentials and .credentials_rsaparams of an agent the
reconciler registered (agents.registration: reconciler; a Secret owned by the Job). With it no mode runs
config.cmd or needs a PAT: register copies the files to AZP_STATE_DIR, once and run into the agent directory.
The reconciler writes the key as plain RSAParametersSerializable JSON (what the agent writes on Linux); the
Windows agent reads it only DPAPI-protected in LocalMachine scope (azure-pipelines-agent
src/Agent.Listener/Configuration.Windows/RSAEncryptedFileKeyManager.cs, LoadParameters/SaveParameters), which
only this machine can do, so before the agent starts Protect-AgentKey encrypts a plain key in place with
ProtectedData.Protect(bytes, null, LocalMachine) and marks the file hidden, exactly as SaveParameters does.
#>
[CmdletBinding()]
param(
    [Parameter(Position = 0)]
    [string]$Mode = 'once'
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

$IdentityFiles = @('.agent', '.credentials', '.credentials_rsaparams')
$OptionalFiles = @('.env', '.path', '.capabilities', '.proxy', '.proxycredentials', '.proxybypass', '.certificates')
# Every name a token can travel under: never handed to the agent, never published as a capability.
$TokenVars = @('AZP_TOKEN', 'AZP_TOKEN_FILE', 'VSTS_AGENT_INPUT_TOKEN')

function Write-Log {
    param([string]$Message)
    [Console]::Error.WriteLine("start.ps1: $Message")
}

function Exit-WithUsageError {
    param([string]$Message)
    Write-Log $Message
    exit 2
}

function Get-Setting {
    param([string]$Name, [string]$Default)
    $value = [Environment]::GetEnvironmentVariable($Name)
    if ([string]::IsNullOrEmpty($value)) { return $Default }
    return $value
}

$AgentDir = Get-Setting -Name 'AZP_AGENT_DIR' -Default 'C:\azp\agent'
$StateDir = Get-Setting -Name 'AZP_STATE_DIR' -Default 'C:\azp\state'
$WorkDir = Get-Setting -Name 'AZP_WORK' -Default 'C:\azp\_work'
$Pool = Get-Setting -Name 'AZP_POOL' -Default 'Default'
$AgentName = Get-Setting -Name 'AZP_AGENT_NAME' -Default $env:COMPUTERNAME
$SecretDir = Get-Setting -Name 'AZP_SECRET_DIR' -Default 'C:\var\run\secrets\azp'
$DisableLogUploads = Get-Setting -Name 'AZP_DISABLE_LOG_UPLOADS' -Default 'false'
$TerminationLog = Get-Setting -Name 'AZP_TERMINATION_LOG' -Default '/dev/termination-log'

function Assert-AgentScript {
    param([string]$Name)
    if (-not (Test-Path -LiteralPath (Join-Path $AgentDir $Name) -PathType Leaf)) {
        Exit-WithUsageError "AZP_AGENT_DIR=$AgentDir has no $Name (is the agent installed there?)"
    }
}

function Assert-RegistrationInput {
    if ([string]::IsNullOrEmpty($env:AZP_URL)) {
        Exit-WithUsageError 'AZP_URL is required (the organization URL, e.g. https://dev.azure.com/contoso)'
    }
    if ($env:AZP_URL -notmatch '^https?://[^\s/]+(/\S*)?$') {
        Exit-WithUsageError "AZP_URL must be an http(s) URL such as https://dev.azure.com/contoso, got '$($env:AZP_URL)'"
    }
    if ([string]::IsNullOrEmpty($AgentName) -or $AgentName -match '\s') {
        Exit-WithUsageError "AZP_AGENT_NAME must be a non-empty name without spaces (default: the computer name), got '$AgentName'"
    }
    if ($DisableLogUploads -notin @('true', 'false')) {
        Exit-WithUsageError "AZP_DISABLE_LOG_UPLOADS must be true or false, got '$DisableLogUploads'"
    }
    if (-not [string]::IsNullOrEmpty($env:AZP_CA_CERT_FILE) -and -not (Test-Path -LiteralPath $env:AZP_CA_CERT_FILE -PathType Leaf)) {
        Exit-WithUsageError "AZP_CA_CERT_FILE=$($env:AZP_CA_CERT_FILE) is not a readable file (mount the CA bundle there)"
    }
    if (-not [string]::IsNullOrEmpty($env:AZP_PROXY_URL) -and $env:AZP_PROXY_URL -notmatch '^https?://\S+$') {
        Exit-WithUsageError "AZP_PROXY_URL must be an http(s) URL such as http://proxy.example.com:3128, got '$($env:AZP_PROXY_URL)'"
    }
    Assert-AgentScript -Name 'config.cmd'
}

# The proxy and CA options of config.cmd; writes .proxybypass (one regular expression a line).
function Get-NetworkArgument {
    $arguments = @()
    if (-not [string]::IsNullOrEmpty($env:AZP_PROXY_URL)) {
        $arguments += @('--proxyurl', $env:AZP_PROXY_URL)
        if (-not [string]::IsNullOrEmpty($env:AZP_PROXY_USERNAME)) {
            $arguments += @('--proxyusername', $env:AZP_PROXY_USERNAME, '--proxypassword', "$($env:AZP_PROXY_PASSWORD)")
        }
        if (-not [string]::IsNullOrEmpty($env:AZP_PROXY_BYPASS)) {
            $patterns = $env:AZP_PROXY_BYPASS -split ',' | Where-Object { -not [string]::IsNullOrWhiteSpace($_) } | ForEach-Object { $_.Trim() }
            Set-Content -LiteralPath (Join-Path $AgentDir '.proxybypass') -Value $patterns
        }
    }
    if (-not [string]::IsNullOrEmpty($env:AZP_CA_CERT_FILE)) {
        $arguments += @('--sslcacert', $env:AZP_CA_CERT_FILE)
    }
    return $arguments
}

function Read-Token {
    if (-not [string]::IsNullOrEmpty($env:AZP_TOKEN_FILE)) {
        if (-not (Test-Path -LiteralPath $env:AZP_TOKEN_FILE -PathType Leaf)) {
            Exit-WithUsageError "AZP_TOKEN_FILE=$($env:AZP_TOKEN_FILE) is not a readable file (mount the Secret holding the PAT there)"
        }
        $token = Get-Content -LiteralPath $env:AZP_TOKEN_FILE -Raw
        $source = 'AZP_TOKEN_FILE'
    }
    elseif (-not [string]::IsNullOrEmpty($env:AZP_TOKEN)) {
        Write-Log 'warning: AZP_TOKEN puts the PAT in the environment; mount it as a file and set AZP_TOKEN_FILE instead'
        $token = $env:AZP_TOKEN
        $source = 'AZP_TOKEN'
    }
    else {
        Exit-WithUsageError 'AZP_TOKEN_FILE is required (the mounted Secret file holding the PAT; AZP_TOKEN is accepted for compatibility)'
    }
    # Secrets edited by hand often end in a newline; a PAT never contains whitespace.
    $token = ($token -replace '\s', '')
    if ([string]::IsNullOrEmpty($token)) {
        Exit-WithUsageError "the PAT read from $source is empty"
    }
    return $token
}

function Invoke-AgentConfiguration {
    param([string]$Token)
    $ignore = $TokenVars -join ','
    if (-not [string]::IsNullOrEmpty($env:VSO_AGENT_IGNORE)) { $ignore = "$($env:VSO_AGENT_IGNORE),$ignore" }
    $env:VSO_AGENT_IGNORE = $ignore
    Remove-Item -Path 'Env:\AZP_TOKEN', 'Env:\VSTS_AGENT_INPUT_TOKEN' -ErrorAction SilentlyContinue

    $arguments = @('--unattended', '--url', $env:AZP_URL, '--auth', 'pat', '--token', $Token, '--pool', $Pool,
        '--agent', $AgentName, '--work', $WorkDir, '--replace')
    # Off by default: with it, job logs stay inside a pod that is deleted after the job.
    if ($DisableLogUploads -eq 'true') { $arguments += '--disableloguploads' }
    $arguments += Get-NetworkArgument

    Write-Log "configuring agent '$AgentName' in pool '$Pool' of $($env:AZP_URL)"
    Push-Location -LiteralPath $AgentDir
    try {
        & (Join-Path $AgentDir 'config.cmd') @arguments
        $status = $LASTEXITCODE
    }
    finally {
        Pop-Location
    }
    if ($status -ne 0) {
        Write-Log "config.cmd failed with exit code ${status}: check AZP_URL, AZP_POOL and that the PAT has the scope Agent Pools (Read & manage)"
        exit $status
    }
    foreach ($name in $IdentityFiles) {
        if (-not (Test-Path -LiteralPath (Join-Path $AgentDir $name))) {
            Write-Log "config.cmd reported success but wrote no $name in $AgentDir"
            exit 1
        }
    }
}

function Copy-AgentFile {
    param([string]$From, [string]$To, [string[]]$Names)
    foreach ($name in $Names) {
        $source = Join-Path $From $name
        if (Test-Path -LiteralPath $source) {
            # -Force: the agent marks .credentials_rsaparams hidden on Windows.
            Copy-Item -LiteralPath $source -Destination (Join-Path $To $name) -Force
        }
    }
}

function Save-AgentState {
    try {
        New-Item -ItemType Directory -Force -Path $StateDir | Out-Null
    }
    catch [System.UnauthorizedAccessException], [System.IO.IOException] {
        Exit-WithUsageError "AZP_STATE_DIR=$StateDir is not a writable directory (mount the emptyDir shared with the run container there)"
    }
    Copy-AgentFile -From $AgentDir -To $StateDir -Names ($IdentityFiles + $OptionalFiles)
    Write-Log "agent '$AgentName' registered; its identity is in $StateDir (DPAPI: see README before relying on run)"
}

# The agent's id from .agent to this init container's termination message, as start.sh does: the
# reconciler reads it from the pod list. Best effort: registration stands without it.
function Publish-AgentId {
    $settings = Join-Path $AgentDir '.agent'
    try {
        $id = (Get-Content -LiteralPath $settings -Raw | ConvertFrom-Json).agentId
    }
    catch {
        $id = $null
    }
    if ($null -eq $id) {
        Write-Log "no agentId in ${settings}: the reconciler will find the agent by listing the pool"
        return
    }
    try {
        Set-Content -LiteralPath $TerminationLog -Value "azp-agents.dev/agent-id=$id" -ErrorAction Stop
    }
    catch {
        Write-Log "could not write ${TerminationLog}: the reconciler will find agent $id by listing the pool"
    }
}

function Assert-NoToken {
    foreach ($name in $TokenVars) {
        if ($null -ne [Environment]::GetEnvironmentVariable($name)) {
            Exit-WithUsageError "$name is set in the run container: only the register init container may see the PAT; remove it from this container"
        }
    }
    if (Test-Path -LiteralPath (Join-Path $SecretDir 'token') -PathType Leaf) {
        Exit-WithUsageError "a token is readable at $SecretDir\token (AZP_SECRET_DIR): mount the PAT Secret only in the register init container"
    }
}

function Restore-AgentState {
    foreach ($name in $IdentityFiles) {
        if (-not (Test-Path -LiteralPath (Join-Path $StateDir $name))) {
            Exit-WithUsageError "AZP_STATE_DIR=$StateDir has no ${name}: run 'start.ps1 register' in an init container sharing that directory first"
        }
    }
    Copy-AgentFile -From $StateDir -To $AgentDir -Names ($IdentityFiles + $OptionalFiles)
}

function Install-AgentFiles {
    param([string]$To)
    foreach ($name in $IdentityFiles) {
        if (-not (Test-Path -LiteralPath (Join-Path $env:AZP_AGENT_FILES $name) -PathType Leaf)) {
            Exit-WithUsageError "AZP_AGENT_FILES=$env:AZP_AGENT_FILES has no readable $name (mount the agent's Secret there)"
        }
    }
    Copy-AgentFile -From $env:AZP_AGENT_FILES -To $To -Names $IdentityFiles
    Write-Log "agent files installed from $env:AZP_AGENT_FILES into ${To}: no registration needed"
}

# A key file that is still plain JSON (written by the reconciler, not by config.cmd) is protected with DPAPI
# in LocalMachine scope and hidden, as RSAEncryptedFileKeyManager.SaveParameters writes it; a protected one
# (config.cmd's) is left alone.
function Protect-AgentKey {
    $keyFile = Join-Path $AgentDir '.credentials_rsaparams'
    $bytes = [System.IO.File]::ReadAllBytes($keyFile)
    $text = [System.Text.Encoding]::UTF8.GetString($bytes).TrimStart([char]0xFEFF).Trim()
    if (-not $text.StartsWith('{')) { return }
    Add-Type -AssemblyName System.Security
    $scope = [System.Security.Cryptography.DataProtectionScope]::LocalMachine
    $protected = [System.Security.Cryptography.ProtectedData]::Protect([System.Text.Encoding]::UTF8.GetBytes($text), $null, $scope)
    [System.IO.File]::WriteAllBytes($keyFile, $protected)
    $item = Get-Item -LiteralPath $keyFile -Force
    $item.Attributes = $item.Attributes -bor [System.IO.FileAttributes]::Hidden
}

function Start-AgentOnce {
    Assert-AgentScript -Name 'run.cmd'
    Protect-AgentKey
    # Console control events (Ctrl+C, container shutdown) reach every process on the console, the agent
    # included, so nothing needs forwarding here; the exit code is the agent's.
    Write-Log "starting agent '$AgentName' for one job"
    Push-Location -LiteralPath $AgentDir
    try {
        & (Join-Path $AgentDir 'run.cmd') --once
        $status = $LASTEXITCODE
    }
    finally {
        Pop-Location
    }
    Write-Log "agent exited with status $status"
    exit $status
}

switch ($Mode) {
    'register' {
        if ($env:AZP_AGENT_FILES) {
            Assert-NoToken
            Install-AgentFiles -To $AgentDir
        }
        else {
            Assert-RegistrationInput
            Invoke-AgentConfiguration -Token (Read-Token)
        }
        Save-AgentState
        Publish-AgentId
    }
    'run' {
        Assert-NoToken
        if ($env:AZP_AGENT_FILES) { Install-AgentFiles -To $AgentDir } else { Restore-AgentState }
        Start-AgentOnce
    }
    'once' {
        if ($env:AZP_AGENT_FILES) {
            Assert-NoToken
            Install-AgentFiles -To $AgentDir
            Start-AgentOnce
        }
        Assert-RegistrationInput
        Invoke-AgentConfiguration -Token (Read-Token)
        # Nothing that runs pipeline steps may inherit a token variable.
        foreach ($name in $TokenVars) { Remove-Item -Path "Env:\$name" -ErrorAction SilentlyContinue }
        Start-AgentOnce
    }
    default {
        Exit-WithUsageError "unknown mode '$Mode': use once (default on Windows), register (init container) or run (main container)"
    }
}
