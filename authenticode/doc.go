// Package authenticode decides, as EDK2's DxeImageVerificationLib does
// under UEFI Secure Boot, whether firmware holding the signature databases
// db and dbx would start a PE/COFF image.
//
// It computes the image's Authenticode hash, checks the PKCS#7 signatures
// of its certificate table and follows each signer's certificate chain to
// the certificates of db and dbx. Validity dates are ignored, as firmware
// has no trusted clock. Left out, so that an image EDK2 would start may be
// refused here: signatures in BER rather than DER or with more than one
// signer, certificates that Go's crypto/x509 does not parse, sections that
// overlap, certificate tables over 1 MiB, and timestamps (a certificate
// whose hash dbx holds is refused even for an image timestamped before its
// revocation). Not copied, so that an image EDK2 would refuse may be
// accepted here: EDK2 reads the digest algorithm at a fixed offset and so
// refuses a signature under 256 bytes or over 64 KiB, and OpenSSL refuses
// a certificate with a critical extension it does not know.
//
// The image is read through an io.ReaderAt: only its headers and its
// certificate table are held in memory, and the bytes hashed stream
// through a buffer of 1 MiB, so that verifying an image of any size takes
// a few MiB.
package authenticode
