// Package sign signs and verifies installer images the way cosign does with
// a key pair: an ECDSA P-256 signature over cosign's simple-signing payload
// for the image's manifest digest, stored as a layer of the image
// REPO:sha256-<hex>.sig in the image's own repository; and it reads the
// policy that says which images must be signed by which keys.
//
// Only cosign's key-pair mode is implemented: no Fulcio certificates, no
// Rekor transparency log, no Sigstore bundles. A signature written here is
// accepted by `cosign verify --key cosign.pub --insecure-ignore-tlog`, and
// one written by `cosign sign --key cosign.key --tlog-upload=false` is
// accepted here.
package sign
