# A host running Portcullis in front of its services, in the shape of field notes §1: each service names its
# upstream and whether it bypasses authentication; certificates come from Let's Encrypt; the OpenID client
# secret is a credential, never in the Nix store.
{ ... }:

{
  imports = [ ./module.nix ];

  services.portcullis = {
    enable = true;
    openFirewall = true;
    credentials.client_secret = "/run/secrets/portcullis-client-secret";
    # The secret file exists only on the host, so the build-time check cannot read it.
    checkConfig = false;
    settings = {
      domain = "example.com";
      server.trusted_proxies = [ ];
      tls.acme = {
        directory = "https://acme-v02.api.letsencrypt.org/directory";
        contact = "admin@example.com";
      };
      auth.issuers = [
        {
          name = "authelia";
          issuer = "https://auth.example.com";
          audiences = [ "portcullis" ];
          introspection_endpoint = "https://auth.example.com/api/oidc/introspection";
          client_id = "portcullis";
          introspection_auth_method = "client_secret_post";
          client_secret_file = "\${CREDENTIALS_DIRECTORY}/client_secret";
        }
      ];
      services = {
        mediamanager = {
          upstream = "http://storage:16366";
          bypassAuth = false;
          allow_groups = [ "media" ];
        };
        jellyfin = {
          upstream = "http://storage:8096";
          bypassAuth = true;
        };
        grafana = {
          upstream = "http://127.0.0.1:3000";
          hosts = [ "grafana.example.com" ];
          allow_groups = [ "admins" ];
        };
      };
    };
  };
}
