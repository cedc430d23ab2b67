// SPDX-License-Identifier: GPL-2.0
/*
 * edu_test: drives QEMU's edu device (1234:11e8) from inside the L2 guest of the rig and
 * reports what it saw as "EDU-RESULT key=value ..." lines in the kernel log.
 *
 * On probe: ident and liveness through BAR0, a DMA round trip RAM -> edu -> RAM with a byte
 * pattern, then, when irq_mode is "intx" or "msi", `irqs` interrupts raised through the
 * device's raise register, each acknowledged by the handler, timing the round trip.
 *
 * Module parameters: irq_mode=none|intx|msi (default none), irqs=N (default 1000),
 * dma_len=N bytes (default 3000, below the 4096-byte buffer: see RIG.md), mmio_reads=N
 * (default 0: that many reads of the ident register, timed, for BAR read throughput).
 */
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/interrupt.h>
#include <linux/dma-mapping.h>
#include <linux/completion.h>
#include <linux/ktime.h>
#include <linux/delay.h>

#define EDU_IDENT	0x00
#define EDU_LIVE	0x04
#define EDU_IRQ_STATUS	0x24
#define EDU_IRQ_RAISE	0x60
#define EDU_IRQ_ACK	0x64
#define EDU_DMA_SRC	0x80
#define EDU_DMA_DST	0x88
#define EDU_DMA_CNT	0x90
#define EDU_DMA_CMD	0x98
#define EDU_DMA_START	0x1
#define EDU_DMA_TO_RAM	0x2
#define EDU_BUF		0x40000

static char *irq_mode = "none";
module_param(irq_mode, charp, 0444);
static int irqs = 1000;
module_param(irqs, int, 0444);
static int dma_len = 3000;
module_param(dma_len, int, 0444);
static int mmio_reads;
module_param(mmio_reads, int, 0444);

struct edu {
	void __iomem *bar;
	struct completion done;
	atomic_t handled;
	atomic_t spurious;
};

static irqreturn_t edu_irq(int irq, void *data)
{
	struct edu *edu = data;
	u32 status = ioread32(edu->bar + EDU_IRQ_STATUS);

	if (!status) {
		atomic_inc(&edu->spurious);
		return IRQ_NONE;
	}
	iowrite32(status, edu->bar + EDU_IRQ_ACK);
	atomic_inc(&edu->handled);
	complete(&edu->done);
	return IRQ_HANDLED;
}

static int edu_dma_wait(struct edu *edu)
{
	int i;

	for (i = 0; i < 100000; i++) {
		if (!(readq(edu->bar + EDU_DMA_CMD) & EDU_DMA_START))
			return 0;
		udelay(10);
	}
	return -ETIMEDOUT;
}

static int edu_dma(struct edu *edu, struct pci_dev *pdev)
{
	dma_addr_t dma;
	u8 *buf = dma_alloc_coherent(&pdev->dev, 4096, &dma, GFP_KERNEL);
	int i, bad = 0;

	if (!buf)
		return -ENOMEM;
	for (i = 0; i < dma_len; i++)
		buf[i] = (u8)(i * 7 + 3);
	writeq(dma, edu->bar + EDU_DMA_SRC);
	writeq(EDU_BUF, edu->bar + EDU_DMA_DST);
	writeq(dma_len, edu->bar + EDU_DMA_CNT);
	writeq(EDU_DMA_START, edu->bar + EDU_DMA_CMD);
	if (edu_dma_wait(edu))
		bad = -1;
	memset(buf, 0, 4096);
	writeq(EDU_BUF, edu->bar + EDU_DMA_SRC);
	writeq(dma, edu->bar + EDU_DMA_DST);
	writeq(dma_len, edu->bar + EDU_DMA_CNT);
	writeq(EDU_DMA_START | EDU_DMA_TO_RAM, edu->bar + EDU_DMA_CMD);
	if (edu_dma_wait(edu))
		bad = -1;
	for (i = 0; i < dma_len && !bad; i++)
		if (buf[i] != (u8)(i * 7 + 3))
			bad = i + 1;
	pr_err("EDU-RESULT dma=%s dma_len=%d dma_addr=%pad first_bad=%d\n",
	       bad ? "bad" : "ok", dma_len, &dma, bad);
	dma_free_coherent(&pdev->dev, 4096, buf, dma);
	return bad ? -EIO : 0;
}

static void edu_irq_test(struct edu *edu, struct pci_dev *pdev)
{
	unsigned int flags = strcmp(irq_mode, "msi") ? PCI_IRQ_LEGACY : PCI_IRQ_MSI;
	int nvec = pci_alloc_irq_vectors(pdev, 1, 1, flags);
	int irq, i, lost = 0;
	u64 start, total = 0;

	if (nvec < 0) {
		pr_err("EDU-RESULT irq_mode=%s irq_alloc=%d\n", irq_mode, nvec);
		return;
	}
	irq = pci_irq_vector(pdev, 0);
	if (request_irq(irq, edu_irq, IRQF_SHARED, "edu_test", edu)) {
		pr_err("EDU-RESULT irq_mode=%s request_irq=failed\n", irq_mode);
		goto free;
	}
	for (i = 0; i < irqs; i++) {
		reinit_completion(&edu->done);
		start = ktime_get_ns();
		iowrite32(1, edu->bar + EDU_IRQ_RAISE);
		if (!wait_for_completion_timeout(&edu->done, HZ)) {
			lost++;
			continue;
		}
		total += ktime_get_ns() - start;
	}
	/* Any interrupt after the last one would be a double delivery. */
	msleep(50);
	free_irq(irq, edu);
	pr_err("EDU-RESULT irq_mode=%s irqs=%d handled=%d lost=%d spurious=%d avg_ns=%llu\n",
	       irq_mode, irqs, atomic_read(&edu->handled), lost, atomic_read(&edu->spurious),
	       irqs - lost ? total / (irqs - lost) : 0);
free:
	pci_free_irq_vectors(pdev);
}

static int edu_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct edu *edu;
	u32 ident, live;
	int err;

	edu = devm_kzalloc(&pdev->dev, sizeof(*edu), GFP_KERNEL);
	if (!edu)
		return -ENOMEM;
	init_completion(&edu->done);
	err = pcim_enable_device(pdev);
	if (err)
		return err;
	pci_set_master(pdev);
	err = dma_set_mask_and_coherent(&pdev->dev, DMA_BIT_MASK(28));
	if (err)
		return err;
	edu->bar = pcim_iomap(pdev, 0, 0);
	if (!edu->bar)
		return -ENOMEM;
	ident = ioread32(edu->bar + EDU_IDENT);
	iowrite32(0x12345678, edu->bar + EDU_LIVE);
	live = ioread32(edu->bar + EDU_LIVE);
	pr_err("EDU-RESULT dev=%s ident=%#x live=%#x bar0=%pR\n", pci_name(pdev), ident, live,
	       &pdev->resource[0]);
	edu_dma(edu, pdev);
	if (mmio_reads > 0) {
		u64 start = ktime_get_ns(), ns;
		u32 bad = 0;
		int i;

		for (i = 0; i < mmio_reads; i++)
			bad += ioread32(edu->bar + EDU_IDENT) != 0x010000ed;
		ns = ktime_get_ns() - start;
		pr_err("EDU-RESULT mmio_reads=%d ns=%llu reads_per_s=%llu wrong=%u\n", mmio_reads, ns,
		       ns ? (u64)mmio_reads * 1000000000ULL / ns : 0, bad);
	}
	if (strcmp(irq_mode, "none"))
		edu_irq_test(edu, pdev);
	pci_set_drvdata(pdev, edu);
	return 0;
}

static const struct pci_device_id edu_ids[] = {
	{ PCI_DEVICE(0x1234, 0x11e8) },
	{ }
};
MODULE_DEVICE_TABLE(pci, edu_ids);

static struct pci_driver edu_driver = {
	.name = "edu_test",
	.id_table = edu_ids,
	.probe = edu_probe,
};
module_pci_driver(edu_driver);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("edu device test driver for the vmm rig");
