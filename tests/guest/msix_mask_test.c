// SPDX-License-Identifier: GPL-2.0
/*
 * msix_mask_test: per-vector MSI-X masking through a passed-through e1000e (82574L,
 * 8086:10d3). The device raises vectors from software: a write to its Interrupt Cause Set
 * register sets a cause, and IVAR routes each cause to an MSI-X vector.
 *
 * Sequence, printed as "MSIX-RESULT key=value ...":
 *   raise RXQ0 (vector 0)                  -> delivered once        (before=1)
 *   mask vector 0 in the MSI-X table, raise -> nothing delivered    (masked=1)
 *   raise TXQ0 (vector 1) meanwhile        -> delivered             (other=1)
 *   the PBA meanwhile                      -> bit 0 set             (pba=1)
 *   unmask vector 0                        -> the pending one, once (after=2)
 *   the PBA then                           -> bit 0 clear           (pba_after=0)
 */
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/interrupt.h>
#include <linux/irq.h>
#include <linux/msi.h>
#include <linux/delay.h>

#define E1000_ICR	0xc0
#define E1000_ICS	0xc8
#define E1000_IMS	0xd0
#define E1000_IMC	0xd8
#define E1000_EIAC	0xdc
#define E1000_IVAR	0xe4
#define E1000_ITR	0xc4
#define E1000_EITR(n)	(0xe8 + 4 * (n))
#define CAUSE_RXQ0	(1u << 20)
#define CAUSE_TXQ0	(1u << 22)
/* IVAR: RXQ0 -> vector 0 (valid), TXQ0 -> vector 1 (valid); other causes unrouted. */
#define IVAR_VALUE	(0x8u | (0x9u << 8))

struct msix_test {
	void __iomem *bar;
	atomic_t count[2];
};

static irqreturn_t vec_irq(int irq, void *data, int vec, u32 cause)
{
	struct msix_test *t = data;

	/* Clear the cause (write 1 to clear) so the device may raise it again. */
	iowrite32(cause, t->bar + E1000_ICR);
	atomic_inc(&t->count[vec]);
	return IRQ_HANDLED;
}

static irqreturn_t vec0_irq(int irq, void *data)
{
	return vec_irq(irq, data, 0, CAUSE_RXQ0);
}

static irqreturn_t vec1_irq(int irq, void *data)
{
	return vec_irq(irq, data, 1, CAUSE_TXQ0);
}

/* Bit 0 of the MSI-X Pending Bit Array, read from the device's BAR like any driver would. */
static int pba_bit0(struct pci_dev *pdev)
{
	u32 pba_reg;
	void __iomem *bar;
	int val;

	pci_read_config_dword(pdev, pdev->msix_cap + PCI_MSIX_PBA, &pba_reg);
	bar = pci_iomap_range(pdev, pba_reg & PCI_MSIX_PBA_BIR, pba_reg & PCI_MSIX_PBA_OFFSET, 8);
	if (!bar)
		return -1;
	val = ioread32(bar) & 1;
	pci_iounmap(pdev, bar);
	return val;
}

static void raise_cause(struct msix_test *t, u32 cause)
{
	iowrite32(cause, t->bar + E1000_ICS);
	msleep(300);
}

static int msix_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct msix_test *t;
	int err, irq0, irq1, before, masked, other, after, pba, pba_after, i;

	t = devm_kzalloc(&pdev->dev, sizeof(*t), GFP_KERNEL);
	if (!t)
		return -ENOMEM;
	err = pcim_enable_device(pdev);
	if (err)
		return err;
	pci_set_master(pdev);
	t->bar = pcim_iomap(pdev, 0, 0);
	if (!t->bar)
		return -ENOMEM;
	err = pci_alloc_irq_vectors(pdev, 2, 5, PCI_IRQ_MSIX);
	if (err < 0) {
		pr_err("MSIX-RESULT alloc=%d\n", err);
		return err;
	}
	irq0 = pci_irq_vector(pdev, 0);
	irq1 = pci_irq_vector(pdev, 1);
	if (request_irq(irq0, vec0_irq, 0, "msix_test0", t) ||
	    request_irq(irq1, vec1_irq, 0, "msix_test1", t)) {
		pr_err("MSIX-RESULT request_irq=failed\n");
		return -EIO;
	}
	/* No interrupt throttling: a throttled vector is notified again when its timer expires,
	 * which would count as a second delivery. */
	iowrite32(0, t->bar + E1000_ITR);
	for (i = 0; i < 5; i++)
		iowrite32(0, t->bar + E1000_EITR(i));
	iowrite32(0xffffffff, t->bar + E1000_IMC);
	ioread32(t->bar + E1000_ICR);
	iowrite32(0, t->bar + E1000_EIAC);
	iowrite32(IVAR_VALUE, t->bar + E1000_IVAR);
	iowrite32(CAUSE_RXQ0 | CAUSE_TXQ0, t->bar + E1000_IMS);
	/* A previous user (an earlier guest in the same host boot) may have left vectors pending
	 * in the device; let them arrive before counting. */
	msleep(300);
	atomic_set(&t->count[0], 0);
	atomic_set(&t->count[1], 0);

	raise_cause(t, CAUSE_RXQ0);
	before = atomic_read(&t->count[0]);

	pci_msi_mask_irq(irq_get_irq_data(irq0));
	raise_cause(t, CAUSE_RXQ0);
	masked = atomic_read(&t->count[0]);
	raise_cause(t, CAUSE_TXQ0);
	other = atomic_read(&t->count[1]);
	pba = pba_bit0(pdev);

	pci_msi_unmask_irq(irq_get_irq_data(irq0));
	msleep(300);
	after = atomic_read(&t->count[0]);
	pba_after = pba_bit0(pdev);

	pr_err("MSIX-RESULT vectors=%d pba=%d pba_after=%d before=%d masked=%d other=%d after=%d\n",
	       err, pba, pba_after, before, masked, other, after);
	free_irq(irq0, t);
	free_irq(irq1, t);
	pci_free_irq_vectors(pdev);
	return 0;
}

static const struct pci_device_id msix_ids[] = {
	{ PCI_DEVICE(0x8086, 0x10d3) },
	{ }
};
MODULE_DEVICE_TABLE(pci, msix_ids);

static struct pci_driver msix_driver = {
	.name = "msix_mask_test",
	.id_table = msix_ids,
	.probe = msix_probe,
};
module_pci_driver(msix_driver);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("per-vector MSI-X masking test for the vmm rig");
