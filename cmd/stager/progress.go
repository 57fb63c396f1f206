package main

import (
	"github.com/stagehand-dev/stagehand/internal/bytesize"

	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// progress shows long work: a bar on a terminal, a log line every few
// seconds otherwise.
type progress struct {
	w        io.Writer
	what     string
	bar      *progressbar.ProgressBar
	lastLog  time.Time
	done     int64
	total    int64
	started  time.Time
	terminal bool
	// fetched and reused, during a delta staging: what came from the
	// registry and what from this machine (delta set).
	fetched, reused int64
	delta           bool
}

// transfer notes what a delta staging fetched and reused so far.
func (p *progress) transfer(fetched, reused int64) {
	p.fetched, p.reused, p.delta = fetched, reused, true
}

// description is what the bar says it does.
func (p *progress) description() string {
	if !p.delta {
		return p.what
	}
	return fmt.Sprintf("%s (fetched %s, %s from this machine)", p.what, humanBytes(p.fetched), humanBytes(p.reused))
}

func newProgress(w io.Writer, what string) *progress {
	p := &progress{w: w, what: what, started: time.Now(), lastLog: time.Now()}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.terminal = true
	}
	return p
}

func (p *progress) update(done, total int64) {
	if done < p.done && p.delta {
		p.delta = false // a delta given up: the whole image, from the start
		if p.bar != nil {
			p.bar.Describe(p.what)
		}
	}
	p.done, p.total = done, total
	if p.terminal {
		if p.bar == nil {
			p.bar = progressbar.NewOptions64(total,
				progressbar.OptionSetWriter(p.w), progressbar.OptionSetDescription(p.what),
				progressbar.OptionShowBytes(true), progressbar.OptionShowTotalBytes(true),
				progressbar.OptionSetPredictTime(true), progressbar.OptionThrottle(100*time.Millisecond),
				progressbar.OptionFullWidth(), progressbar.OptionClearOnFinish())
		}
		if p.delta {
			p.bar.Describe(p.description())
		}
		p.bar.Set64(done)
		return
	}
	if time.Since(p.lastLog) >= 5*time.Second {
		p.lastLog = time.Now()
		p.logLine()
	}
}

func (p *progress) logLine() {
	rate := float64(p.done) / time.Since(p.started).Seconds()
	if p.total > 0 {
		fmt.Fprintf(p.w, "%s: %s of %s (%d%%), %s/s\n", p.description(), humanBytes(p.done), humanBytes(p.total), p.done*100/p.total, humanBytes(int64(rate)))
	} else {
		fmt.Fprintf(p.w, "%s: %s, %s/s\n", p.description(), humanBytes(p.done), humanBytes(int64(rate)))
	}
}

func (p *progress) finish(ok bool) {
	if p.bar != nil {
		if ok {
			p.bar.Finish()
		} else {
			p.bar.Exit()
			fmt.Fprintln(p.w)
		}
	}
}

func humanBytes(n int64) string { return bytesize.Format(n) }

// logf writes a library's log lines to the command's stderr.
func logf(cmd *cobra.Command) func(string, ...any) {
	return func(format string, args ...any) {
		fmt.Fprintf(cmd.ErrOrStderr(), format+"\n", args...)
	}
}
