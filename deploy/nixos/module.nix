# NixOS module: services.portcullis.
#
#   imports = [ ./deploy/nixos/module.nix ];
#   services.portcullis = {
#     enable = true;
#     settings = {
#       domain = "example.com";
#       services.mediamanager = { upstream = "http://storage:16366"; bypassAuth = false; };
#     };
#   };
#
# `settings` mirrors the TOML file key for key (README "Reference") and is rendered with pkgs.formats.toml; the
# common keys are typed options below, every other key passes through as written, and the gateway itself rejects
# unknown keys at build-time check and at start. Per-service `bypassAuth` is accepted by the gateway as an alias
# of `bypass_auth`, so service definitions keep the shape they have elsewhere in a Nix configuration.
#
# Secrets never go into `settings` (it ends up in the world-readable Nix store): list them in `credentials`
# (LoadCredential=) and refer to them as "\${CREDENTIALS_DIRECTORY}/NAME" in a `*_file` key, or put variables in
# `environmentFile` and write "\${VAR}" in any string value.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.portcullis;
  settingsFormat = pkgs.formats.toml { };

  # The TOML has no null: unset optional keys are left out.
  dropNulls = lib.filterAttrsRecursive (_: v: v != null);

  configFile = settingsFormat.generate "portcullis.toml" (dropNulls cfg.settings);

  # The path the service reads and reloads. A stable /etc path (not the store path) lets `systemctl reload`
  # after nixos-rebuild pick up the new file through SIGHUP instead of reloading the old one.
  configPath = "/etc/portcullis/portcullis.toml";

  serviceModule = { name, ... }: {
    freeformType = settingsFormat.type;
    options = {
      upstream = lib.mkOption {
        type = lib.types.str;
        example = "http://127.0.0.1:16366";
        description = "Where requests for this service go: `http://host:port` or `https://host:port`, no path.";
      };
      hosts = lib.mkOption {
        type = lib.types.nullOr (lib.types.listOf lib.types.str);
        default = null;
        example = [ "media.example.com" "*.media.example.com" ];
        description = "Host names (exact or one-label `*.domain` wildcards). Default: `${name}.<domain>`.";
      };
      bypassAuth = lib.mkOption {
        type = lib.types.nullOr lib.types.bool;
        default = null;
        example = true;
        description = ''
          Serve this service without authentication. Rendered as `bypassAuth`, which the gateway accepts as
          `bypass_auth` (set one of the two, not both). Null leaves the gateway's default, false: a service that
          does not bypass is never proxied anonymously.
        '';
      };
      allow_groups = lib.mkOption {
        type = lib.types.nullOr (lib.types.listOf lib.types.str);
        default = null;
        example = [ "admins" ];
        description = "Groups allowed in (from the issuer's groups claim).";
      };
      allow_users = lib.mkOption {
        type = lib.types.nullOr (lib.types.listOf lib.types.str);
        default = null;
        description = "Users (the `sub` or configured username claim) allowed in.";
      };
      allow_emails = lib.mkOption {
        type = lib.types.nullOr (lib.types.listOf lib.types.str);
        default = null;
        example = [ "*@example.com" ];
        description = "E-mail addresses allowed in, exact or `*@domain`.";
      };
    };
  };
in
{
  options.services.portcullis = {
    enable = lib.mkEnableOption "Portcullis, the reverse-proxy auth gateway";

    package = lib.mkOption {
      type = lib.types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage ./package.nix { }";
      description = "The portcullis package.";
    };

    settings = lib.mkOption {
      description = ''
        The configuration file as a Nix attribute set, mirroring the TOML (see the README's reference table).
        Validated with `portcullis check` when the system is built.
      '';
      default = { };
      type = lib.types.submodule {
        freeformType = settingsFormat.type;
        options = {
          domain = lib.mkOption {
            type = lib.types.nullOr lib.types.str;
            default = null;
            example = "example.com";
            description = "Root domain: a service without `hosts` is served at `NAME.<domain>`.";
          };
          server = lib.mkOption {
            default = { };
            description = "Listeners and network settings (`[server]`).";
            type = lib.types.submodule {
              freeformType = settingsFormat.type;
              options = {
                https = lib.mkOption {
                  type = lib.types.str;
                  default = "0.0.0.0:443";
                  description = "HTTPS listener `ip:port`.";
                };
                http = lib.mkOption {
                  type = lib.types.nullOr lib.types.str;
                  default = "0.0.0.0:80";
                  description = "Plain HTTP listener (redirects to HTTPS, answers ACME HTTP-01); null for none.";
                };
                admin = lib.mkOption {
                  type = lib.types.nullOr lib.types.str;
                  default = "127.0.0.1:9090";
                  description = "Admin listener: /healthz, /readyz, /metrics, /config. Keep it private.";
                };
                trusted_proxies = lib.mkOption {
                  type = lib.types.listOf lib.types.str;
                  default = [ ];
                  description = "CIDRs or addresses whose X-Forwarded-* headers are believed.";
                };
              };
            };
          };
          tls = lib.mkOption {
            default = { };
            description = "Certificates (`[tls]`, `[tls.acme]`).";
            type = lib.types.submodule {
              freeformType = settingsFormat.type;
              options.certs_dir = lib.mkOption {
                type = lib.types.str;
                default = "/var/lib/portcullis/certs";
                description = "Directory of PEM certificate/key pairs; ACME and self-signed certificates are written here.";
              };
            };
          };
          services = lib.mkOption {
            type = lib.types.attrsOf (lib.types.submodule serviceModule);
            default = { };
            example = lib.literalExpression ''
              {
                mediamanager = { upstream = "http://storage:16366"; bypassAuth = false; allow_groups = [ "media" ]; };
                status = { upstream = "http://127.0.0.1:3001"; bypassAuth = true; };
              }
            '';
            description = "Services by name (`[services.NAME]`).";
          };
        };
      };
    };

    environmentFile = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      example = "/run/secrets/portcullis.env";
      description = ''
        File of `VAR=value` lines loaded into the service's environment (EnvironmentFile=), for `''${VAR}`
        substitution in any string value of `settings`. Kept out of the Nix store.
      '';
    };

    credentials = lib.mkOption {
      type = lib.types.attrsOf lib.types.path;
      default = { };
      example = { client_secret = "/run/secrets/portcullis-client-secret"; };
      description = ''
        Secret files passed with LoadCredential=: NAME = source path. Refer to them in `settings` as
        `client_secret_file = "''${CREDENTIALS_DIRECTORY}/client_secret"`.
      '';
    };

    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Open the ports of the https and http listeners.";
    };

    checkConfig = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = ''
        Run `portcullis check` on the rendered file when the system is built. Turn off when the file uses
        `''${VAR}`s, credentials or a certificate directory that exist only on the target host (a `certs_dir`
        filled by ACME or `self_signed` is fine).
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    environment.etc."portcullis/portcullis.toml".source =
      if cfg.checkConfig then
        pkgs.runCommand "portcullis-checked.toml" { nativeBuildInputs = [ cfg.package ]; } ''
          portcullis check --config ${configFile}
          ln -s ${configFile} $out
        ''
      else
        configFile;

    networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall (
      let
        port = addr: lib.toInt (lib.last (lib.splitString ":" addr));
      in
      [ (port cfg.settings.server.https) ]
      ++ lib.optional (cfg.settings.server.http != null) (port cfg.settings.server.http)
    );

    systemd.services.portcullis = {
      description = "Portcullis reverse-proxy auth gateway";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      # A changed file reloads (SIGHUP, atomic, old config kept on error) instead of restarting.
      reloadTriggers = [ configFile ];
      environment = {
        PORTCULLIS_CONFIG = configPath;
        PORTCULLIS_LOG_FORMAT = "json";
      };
      serviceConfig = {
        Type = "notify";
        NotifyAccess = "main";
        ExecStart = "${cfg.package}/bin/portcullis run";
        ExecReload = [
          "${cfg.package}/bin/portcullis check"
          "${pkgs.coreutils}/bin/kill -HUP $MAINPID"
        ];
        Restart = "on-failure";
        RestartSec = "2s";
        TimeoutStopSec = "40s";
        KillMode = "mixed";
        LimitNOFILE = 65536;
        EnvironmentFile = lib.mkIf (cfg.environmentFile != null) cfg.environmentFile;
        LoadCredential = lib.mapAttrsToList (name: path: "${name}:${path}") cfg.credentials;

        DynamicUser = true;
        StateDirectory = "portcullis";
        StateDirectoryMode = "0700";
        UMask = "0077";

        AmbientCapabilities = [ "CAP_NET_BIND_SERVICE" ];
        CapabilityBoundingSet = [ "CAP_NET_BIND_SERVICE" ];
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        ProtectProc = "invisible";
        ProcSubset = "pid";
        RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        RemoveIPC = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [ "@system-service" "~@privileged @resources" ];
        SystemCallErrorNumber = "EPERM";
        DevicePolicy = "closed";
      };
    };
  };
}
