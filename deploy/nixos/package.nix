# The portcullis binary, built from this repository with the locked dependencies.
{ lib, rustPlatform }:

rustPlatform.buildRustPackage {
  pname = "portcullis";
  version = "0.1.0";
  src = lib.cleanSourceWith {
    src = ../..;
    filter = path: type: !(lib.hasSuffix "/target" path) && !(lib.hasSuffix "/.git" path);
  };
  cargoLock.lockFile = ../../Cargo.lock;
  # The integration tests need loopback sockets, openssl and pebble; CI runs them (.ci/run).
  doCheck = false;
  meta = {
    description = "A reverse-proxy auth gateway: TLS, hostname routing, OIDC/JWT auth and forward-auth in one binary";
    license = lib.licenses.asl20;
    mainProgram = "portcullis";
  };
}
