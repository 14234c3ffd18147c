#!/bin/sh
# zenvoy's certificates without cert-manager: the same CA and leaves as
# deploy/tls/cert-manager/, made with openssl (1.1.1 or later), one directory per Secret:
#
#   deploy/tls/make-certs.sh DIR
#   for s in zenvoy-controller-tls zenvoy-envoy-tls zenvoy-holder-tls; do
#     kubectl -n zenvoy-system create secret generic "$s" --from-file="DIR/$s/"
#   done
#
# DIR/ca.key is the CA's private key: keep DIR somewhere safe (or delete ca.key once the
# Secrets exist, and make a new CA next time). Run again with the same DIR to renew the
# leaves with the same CA (then replace the Secrets: `kubectl create ... --dry-run=client
# -o yaml | kubectl replace -f -`, and restart: docs/kubernetes.md, TLS).
#
# ZENVOY_NAMESPACE (zenvoy-system) is the namespace of the controller's Service, in its
# certificate's names; DAYS (365) how long the leaves last; the CA lasts ten years.
set -eu

dir=${1:?usage: make-certs.sh DIR}
ns=${ZENVOY_NAMESPACE:-zenvoy-system}
days=${DAYS:-365}

umask 077
mkdir -p "$dir"

if [ ! -f "$dir/ca.key" ]; then
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" -days 3650 -subj /CN=zenvoy-ca \
    -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign,cRLSign,digitalSignature 2>/dev/null
fi

# leaf SECRET USAGE NAME...: DIR/SECRET/{tls.crt,tls.key,ca.crt}, a certificate for the
# DNS names NAME... (the first is its common name), signed by the CA.
leaf() {
  secret=$1 usage=$2
  shift 2
  sans=""
  for name in "$@"; do sans="${sans:+$sans,}DNS:$name"; done
  out="$dir/$secret"
  mkdir -p "$out"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$out/tls.key" -out "$out/tls.csr" -subj "/CN=$1" 2>/dev/null
  printf '%s\n' \
    basicConstraints=critical,CA:FALSE \
    keyUsage=critical,digitalSignature \
    "extendedKeyUsage=$usage" \
    "subjectAltName=$sans" >"$out/ext.cnf"
  openssl x509 -req -in "$out/tls.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days "$days" -extfile "$out/ext.cnf" \
    -out "$out/tls.crt" 2>/dev/null
  cp "$dir/ca.crt" "$out/ca.crt"
  rm -f "$out/tls.csr" "$out/ext.cnf"
  echo "make-certs: $out: $sans ($usage)"
}

# The names are the identities (deploy/tls/cert-manager/certificates.yaml says why).
leaf zenvoy-controller-tls serverAuth zenvoy-controller \
  "zenvoy-controller.$ns.svc" "zenvoy-controller.$ns.svc.cluster.local"
leaf zenvoy-envoy-tls clientAuth zenvoy-envoy
leaf zenvoy-holder-tls clientAuth zenvoy-holder
