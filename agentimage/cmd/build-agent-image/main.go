// Command build-agent-image builds the fleet agent's container image with
// package agentimage and writes it to an OCI layout (-layout) or pushes it
// (-push); make image runs it (docs/image.md).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/stagehand-dev/stagehand/agentimage"
)

// platforms is the repeated -platform OS/ARCH=FILE,FILE… flag.
type platforms []agentimage.Platform

func (p *platforms) String() string { return fmt.Sprint(*p) }

func (p *platforms) Set(s string) error {
	plat, files, ok := strings.Cut(s, "=")
	goos, arch, ok2 := strings.Cut(plat, "/")
	if !ok || !ok2 || files == "" {
		return fmt.Errorf("%q: want OS/ARCH=FILE[,FILE…]", s)
	}
	*p = append(*p, agentimage.Platform{OS: goos, Architecture: arch, Binaries: strings.Split(files, ",")})
	return nil
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "build-agent-image:", err)
		os.Exit(1)
	}
}

func run() error {
	var o agentimage.Options
	var plats platforms
	var user, entrypoint, layoutDir, push string
	flag.Var(&plats, "platform", "OS/ARCH=FILE[,FILE…]: the static binaries of a platform, put under /usr/bin (repeat for each platform)")
	flag.StringVar(&o.CACerts, "ca-certs", "/etc/ssl/certs/ca-certificates.crt", "CA bundle to install at "+agentimage.CACertsPath)
	flag.StringVar(&user, "user", "stagehand:65532", "NAME:UID the entrypoint runs as (its own group, same id); empty: root")
	flag.StringVar(&entrypoint, "entrypoint", "/usr/bin/stagehand-agent", "the image's entrypoint")
	flag.StringVar(&o.Version, "version", "", "version label (the VERSION file)")
	flag.StringVar(&o.Revision, "revision", "", "source revision label (git rev-parse HEAD)")
	flag.StringVar(&o.Source, "source", "https://github.com/stagehand-dev/stagehand", "source repository label")
	flag.StringVar(&layoutDir, "layout", "", "write an OCI layout to this new directory")
	flag.StringVar(&push, "push", "", "push to this image reference instead")
	flag.Parse()
	if flag.NArg() != 0 || (layoutDir == "") == (push == "") {
		return fmt.Errorf("want exactly one of -layout DIR or -push REF, and no arguments")
	}
	o.Platforms = plats
	if entrypoint != "" {
		o.Entrypoint = []string{entrypoint}
	}
	if user != "" {
		name, id, ok := strings.Cut(user, ":")
		uid, err := strconv.Atoi(id)
		if !ok || err != nil {
			return fmt.Errorf("-user %q: want NAME:UID", user)
		}
		o.User = &agentimage.User{Name: name, UID: uid, GID: uid}
	}
	// SOURCE_DATE_EPOCH (reproducible-builds.org) fixes every timestamp.
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		sec, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("SOURCE_DATE_EPOCH=%q: want seconds since 1970", s)
		}
		o.Created = time.Unix(sec, 0)
	}

	idx, err := agentimage.Build(o)
	if err != nil {
		return err
	}
	if push != "" {
		d, err := agentimage.Push(context.Background(), idx, push)
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "pushed %s %s (%s)\n", push, o.Version, d.DigestStr())
		fmt.Println(d) // REPO@sha256:…, what make image signs
		return nil
	}
	h, err := agentimage.WriteLayout(layoutDir, idx, o.Version)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "wrote %s %s (%s)\n", layoutDir, o.Version, h)
	fmt.Println("oci:" + layoutDir + ":" + o.Version)
	return nil
}
