#!/usr/bin/env bash
# Example DICOM TLS material: a CA, a server certificate for the node and a client certificate
# for a caller, all signed by the CA. For tests and trials only: production keys come from the
# hospital's PKI and are never committed.
#
#   deploy/tls/make-certs.sh OUT_DIR [SERVER_CN]     (default CN: localhost, SAN 127.0.0.1)
set -euo pipefail
out=${1:?usage: make-certs.sh OUT_DIR [SERVER_CN]}
cn=${2:-localhost}
mkdir -p "$out"
cd "$out"
days=365
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days "$days" \
    -subj "/CN=pacsnode example CA" 2>/dev/null
for who in node client; do
    subj="/CN=$cn"
    [ "$who" = client ] && subj="/CN=pacsnode example caller"
    openssl req -newkey rsa:2048 -nodes -keyout "$who.key" -out "$who.csr" -subj "$subj" 2>/dev/null
    printf 'subjectAltName=DNS:%s,IP:127.0.0.1\nextendedKeyUsage=%s\n' "$cn" \
        "$([ "$who" = node ] && echo serverAuth || echo clientAuth)" > "$who.ext"
    openssl x509 -req -in "$who.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$who.crt" \
        -days "$days" -extfile "$who.ext" 2>/dev/null
    rm -f "$who.csr" "$who.ext"
done
chmod 600 ./*.key
echo "wrote ca.crt node.crt node.key client.crt client.key in $out"
